"""The real demo search (``search_spaces/demo.yaml``) with each of five search methods.

    python benchmarks/demo_methods.py [--workdir DIR]

Runs ``python -m kdsearch.run search_spaces/demo.yaml`` five times in ``--workdir`` (default
``demo-methods/`` under the current directory; the data, teacher and clip cache are built by
the first run and reused by the others, so every method trains the same students on the same
cached clips), each into its own MLflow experiment:

* ``random``: random sampler, no scheduler (every trial trains every epoch);
* ``random+asha``: random sampler, ASHA;
* ``tpe``: TPE, no scheduler;
* ``optuna+asha``: TPE with Ray's stock OptunaSearch feedback (``search.fidelity_aware:
  false``: trials ASHA stopped count as COMPLETE), ASHA;
* ``kdsearch+asha``: the demo as shipped (fidelity-aware TPE, ASHA).

Then prints, from MLflow, per method: the best completed trial's val_acc, the epochs every
trial trained in total, trials completed and pruned, and the search's wall time. One run per
method: the numbers show what each costs on this problem, not a ranking with error bars
(``benchmarks/search_quality.py`` measures that over seeds on a simulated objective).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "random": ["search.sampler=random", "search.scheduler={name: none}"],
    "random+asha": ["search.sampler=random"],
    "tpe": ["search.scheduler={name: none}"],
    "optuna+asha": ["search.fidelity_aware=false"],
    "kdsearch+asha": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("demo-methods"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for method, overrides in METHODS.items():
        name = f"demo-{method.replace('+', '-')}"
        command = [sys.executable, "-m", "kdsearch.run", str(REPO / "search_spaces/demo.yaml"),
                   "--set", f"experiment.name={name}"]
        for override in overrides:
            command += ["--set", override]
        start = time.monotonic()
        subprocess.run(command, cwd=args.workdir, check=True, stdout=subprocess.DEVNULL)
        seconds[method] = time.monotonic() - start
        print(f"{method}: {seconds[method]:.0f} s", flush=True)
    client = MlflowClient(f"sqlite:///{args.workdir.resolve() / 'mlflow.db'}")
    print("\n| method | best val_acc (completed) | epochs, all trials | completed | pruned "
          "| wall |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        experiment = client.get_experiment_by_name(f"demo-{method.replace('+', '-')}")
        assert experiment is not None
        (parent,) = client.search_runs([experiment.experiment_id],
                                       "tags.`kdsearch.role` = 'search'", max_results=1,
                                       order_by=["attributes.start_time DESC"])
        trials = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
            " and tags.`kdsearch.role` = 'trial'", max_results=1000)
        epochs = sum(int(r.data.tags.get("kdsearch.epochs_run", 0)) for r in trials)
        status = [r.data.tags.get("kdsearch.status") for r in trials]
        best = max((r.data.metrics["val_acc"] for r in trials
                    if r.data.tags.get("kdsearch.status") == "completed"), default=float("nan"))
        print(f"| {method} | {best:.3f} | {epochs} | {status.count('completed')} | "
              f"{status.count('pruned')} | {seconds[method] / 60:.1f} min |")


if __name__ == "__main__":
    main()
