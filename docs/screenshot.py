"""Take the README's screenshot of the MLflow UI from a finished search.

    python docs/screenshot.py --experiment kdsearch-demo [--store sqlite:///mlflow.db]

Starts ``mlflow server`` on a free loopback port over the store, opens the experiment's runs
in headless Chromium (Debian's ``chromium``), shows the trial runs sorted by ``val_acc`` with
the columns the README names, and writes ``docs/mlflow-runs.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from kdsearch.testing import mlflow_server, screenshot_runs
from kdsearch.track.schema import trial_query

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
    (best,) = client.search_runs([experiment.experiment_id], trial_query(),
                                 order_by=["metrics.val_acc DESC"], max_results=1)
    with mlflow_server(args.store) as url:
        screenshot_runs(url, experiment.experiment_id, [best.info.run_name], args.out,
                        width=1600, height=720, order_by="metrics.`val_acc`",
                        columns=COLUMNS, search_filter=trial_query())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
