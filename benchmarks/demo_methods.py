"""The real demo search (``search_spaces/demo.yaml``) with each of six search methods.

    python benchmarks/demo_methods.py [--workdir DIR] [--methods ...] [--smoke]

Runs the demo search six times in this process, through ``kdsearch.search.driver.run_search``
(what ``python -m kdsearch.run search_spaces/demo.yaml`` runs) on one local Ray, in
``--workdir`` (default ``demo-methods/`` under the current directory: the data, the teacher,
the clip cache, ``mlflow.db`` and each method's log ``<method>.log``). The data, teacher and
clip cache are built by the first run and reused by the others, so every method trains the
same students on the same cached clips; each method gets its own MLflow experiment:

* ``random``: random sampler, no scheduler (every trial trains every epoch);
* ``random+asha``: random sampler, ASHA;
* ``tpe``: TPE, no scheduler;
* ``optuna+asha``: TPE with Ray's stock OptunaSearch feedback (trials ASHA stopped count as
  COMPLETE: ``stock_feedback.StockFeedbackOptunaSearch``, which
  ``stock_feedback.searchers_of_run_search`` has ``run_search`` build), ASHA;
* ``kdsearch+asha``: fidelity-aware TPE, ASHA;
* ``kdsearch``: the demo as shipped (fidelity-aware TPE, the default ``agreement`` scheduler).

ASHA runs with the grace period 2 and reduction factor 2 the demo used to ship with.

Then prints, from MLflow, per method: the best completed trial's val_acc, the epochs every
trial trained in total, trials completed and pruned, and the search's wall time (Ray is
started once, by the first method's search; the numbers in ``docs/search-quality.md`` were
measured when each method ran as its own ``python -m kdsearch.run`` process), and from the
searcher the trials it told Optuna COMPLETE. One run per method: the numbers show what each
costs on this problem, not a ranking with error bars (``benchmarks/search_quality.py``
measures that over seeds on a simulated objective).

``--smoke``: the same with a tiny demo (8 training and 4 validation videos of 32x32, a
one-epoch teacher without pretraining, 3 trials of 2 epochs, no KD baseline, clips of 4
frames at crop 16) in ``--workdir``, by default a new temporary folder, removed afterwards;
a check that the benchmark runs, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from stock_feedback import StockFeedbackOptunaSearch, searchers_of_run_search  # noqa: E402

from kdsearch.search.sampler import FidelityAwareOptunaSearch  # noqa: E402

DEMO = REPO / "search_spaces" / "demo.yaml"
ASHA = "search.scheduler={name: asha, grace_period: 2, reduction_factor: 2}"
METHODS = {
    "random": ["search.sampler=random", "search.scheduler={name: none}"],
    "random+asha": ["search.sampler=random", ASHA],
    "tpe": ["search.scheduler={name: none}"],
    "optuna+asha": [ASHA],  # and Ray's stock feedback: STOCK
    "kdsearch+asha": [ASHA],
    "kdsearch": [],
}
STOCK = {"optuna+asha"}
#: The tiny demo of --smoke.
SMOKE = [
    "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
    "data.synthetic.num_frames=16", "data.synthetic.size=32",
    "teacher.epochs=1", "teacher.cache_views=1",
    "student.epochs=2", "student.clip={num_frames: 4, stride: 2, crop_size: 16}",
    "search.num_samples=3", "teacher.pretrain=null", "report.kd_baseline=false",
    "report.onnx=false",
]


def experiment_name(method: str) -> str:
    return f"demo-{method.replace('+', '-')}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where everything is written (default "
                        "demo-methods/; with --smoke a temporary folder, removed afterwards)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--smoke", action="store_true", help="a tiny demo: checks that the "
                        "benchmark runs (under a minute or two on 2 cores)")
    args = parser.parse_args(argv)
    with _workdir(args.workdir, args.smoke) as workdir:
        done = run_methods(workdir, args.methods, SMOKE if args.smoke else [])
        print()
        print("\n".join(table(workdir, args.methods, done)))


@contextlib.contextmanager
def _workdir(given: Path | None, smoke: bool) -> Iterator[Path]:
    if given is not None or not smoke:
        folder = (given or Path("demo-methods")).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="kdsearch-demo-methods-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_methods(workdir: Path, methods: Sequence[str], extra: Sequence[str]
                ) -> dict[str, tuple[float, int]]:
    """Each method's search, one after the other on one Ray; returns, per method, its wall
    seconds and the trials its searcher told Optuna COMPLETE."""
    import ray
    from optuna.trial import TrialState

    from kdsearch.config.load import load_space
    from kdsearch.run import print_outcome
    from kdsearch.search.driver import run_search

    done = {}
    cwd = Path.cwd()
    os.chdir(workdir)  # nothing of a search lands where the command was started
    try:
        for method in methods:
            overrides = [f"experiment.name={experiment_name(method)}", *extra,
                         *METHODS[method]]
            cfg = load_space(DEMO, overrides, cwd=workdir)
            kind = StockFeedbackOptunaSearch if method in STOCK else FidelityAwareOptunaSearch
            log = workdir / f"{method.replace('+', '-')}.log"
            start = time.monotonic()
            with (log.open("w") as sink, contextlib.redirect_stdout(sink),
                  contextlib.redirect_stderr(sink), searchers_of_run_search(kind) as built):
                outcome = run_search(cfg, DEMO)
                print_outcome(outcome, cfg)
            seconds = time.monotonic() - start
            if outcome.best is None:
                raise SystemExit(f"{method}: no trial completed; see {log}")
            (searcher,) = built
            complete = sum(t.state == TrialState.COMPLETE for t in searcher.study.trials)
            done[method] = seconds, complete
            print(f"{method}: {seconds:.0f} s, {type(searcher).__name__} told Optuna "
                  f"COMPLETE for {complete} of {len(searcher.study.trials)} trials", flush=True)
    finally:
        os.chdir(cwd)
        ray.shutdown()
    return done


def table(workdir: Path, methods: Sequence[str], done: dict[str, tuple[float, int]]
          ) -> list[str]:
    from mlflow.tracking import MlflowClient

    from kdsearch.track.schema import EPOCHS_RUN, SEARCH_QUERY, STATUS, Status, trial_runs

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    lines = ["| method | best val_acc (completed) | epochs, all trials | completed | pruned "
             "| wall | told Optuna COMPLETE |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        experiment = client.get_experiment_by_name(experiment_name(method))
        assert experiment is not None
        (parent,) = client.search_runs([experiment.experiment_id], SEARCH_QUERY,
                                       max_results=1, order_by=["attributes.start_time DESC"])
        trials = trial_runs(client, experiment.experiment_id, parent.info.run_id)
        epochs = sum(int(r.data.tags.get(EPOCHS_RUN, 0)) for r in trials)
        status = [r.data.tags.get(STATUS) for r in trials]
        completed, pruned = Status.COMPLETED.value, Status.PRUNED.value
        best = max((r.data.metrics["val_acc"] for r in trials
                    if r.data.tags.get(STATUS) == completed), default=float("nan"))
        lines.append(f"| {method} | {best:.3f} | {epochs} | {status.count(completed)} | "
                     f"{status.count(pruned)} | {done[method][0] / 60:.1f} min | "
                     f"{done[method][1]} |")
    return lines


if __name__ == "__main__":
    main()
