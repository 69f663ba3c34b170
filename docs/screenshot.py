"""Take the README's screenshot of the MLflow UI from a finished search.

    python docs/screenshot.py --experiment kdsearch-demo [--store sqlite:///mlflow.db]

Starts ``mlflow server`` on a free loopback port over the store, opens the experiment's runs
in headless Chromium (Debian's ``chromium``), shows the trial runs sorted by ``val_acc`` with
the columns the README names, and writes ``docs/mlflow-runs.png``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from kdsearch.testing import screenshot_runs

COLUMNS = ("Dataset", "Source",  # toggled off: they only take room
           "val_acc", "val_video_acc", "alpha", "temperature", "lr", "backbone",
           "kdsearch.status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default="kdsearch-demo")
    parser.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "mlflow-runs.png")
    args = parser.parse_args()
    client = MlflowClient(args.store)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"error: no experiment {args.experiment!r} in {args.store}")
    (best,) = client.search_runs([experiment.experiment_id], "tags.`kdsearch.role` = 'trial'",
                                 order_by=["metrics.val_acc DESC"], max_results=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", args.store,
                               "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        screenshot_runs(url, experiment.experiment_id, [best.info.run_name], args.out,
                        width=1600, height=720, order_by="metrics.`val_acc`",
                        columns=COLUMNS, search_filter="tags.`kdsearch.role` = 'trial'")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
