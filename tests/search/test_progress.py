"""The live progress line: counts by status, and the best trial named as every other view names
it (the value at the last epoch, ties by trial id)."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from kdsearch.search.progress import Progress
from kdsearch.track.schema import TrialRow, rank_rows

MAX_T = 4


def _run(progress: Progress, trial_id: str, values: list[float]) -> SimpleNamespace:
    """A trial as Tune hands it to callbacks, after reporting ``values`` epoch by epoch."""
    trial = SimpleNamespace(trial_id=trial_id, status="RUNNING", last_result={})
    for epoch, value in enumerate(values, start=1):
        trial.last_result = {"epoch": epoch, "val_acc": value}
        progress.on_trial_result(0, [trial], trial, trial.last_result)
    trial.status = "TERMINATED"
    progress.on_trial_complete(0, [trial], trial)
    return trial


def test_best_is_the_last_epoch_value_as_in_the_results_table() -> None:
    out = io.StringIO()
    progress = Progress("val_acc", "max", MAX_T, total=4, stream=out)
    curves = {"aaa": [0.5, 0.9, 0.8, 0.80],  # best epoch 0.9, last 0.80
              "bbb": [0.5, 0.6, 0.7, 0.85],
              "ccc": [0.95, 0.99]}  # pruned: higher, but never the best completed
    for trial_id, values in curves.items():
        _run(progress, trial_id, values)
    rows = [TrialRow(t, f"run-{t}", "completed" if len(v) == MAX_T else "pruned", len(v), v[-1],
                     {}) for t, v in curves.items()]
    assert progress.best() == ("bbb", 0.85)
    assert rank_rows(rows, "max")[0].trial_id == "bbb"
    line = progress.line()
    assert "trials 3/4 done: 0 running, 2 completed, 1 pruned, 0 failed" in line
    assert line.endswith("best completed val_acc at the last epoch 0.850 (bbb)")
    assert out.getvalue().splitlines()[-1] == line  # not a terminal: whole lines


def test_ties_go_to_the_same_trial_as_in_every_other_view() -> None:
    progress = Progress("val_acc", "max", MAX_T, total=3, stream=io.StringIO())
    for trial_id in ("zz9", "ab1", "mm5"):
        _run(progress, trial_id, [0.5, 0.6, 0.7, 0.75])
    rows = [TrialRow(t, None, "completed", MAX_T, 0.75, {}) for t in ("zz9", "ab1", "mm5")]
    assert progress.best() == ("ab1", 0.75) == (rank_rows(rows, "max")[0].trial_id, 0.75)


def test_minimised_metric_and_no_completed_trial_yet() -> None:
    progress = Progress("val_acc", "min", MAX_T, total=2, stream=io.StringIO())
    assert progress.best() is None
    assert progress.line().endswith("best completed val_acc at the last epoch -")
    _run(progress, "t1", [0.9, 0.5, 0.4, 0.3])
    _run(progress, "t2", [0.9, 0.8, 0.7, 0.6])
    assert progress.best() == ("t1", 0.3)


def test_the_clock_counts_from_the_start_of_the_search() -> None:
    started = time.monotonic() - 125  # data, Ray and the teacher took two minutes
    progress = Progress("val_acc", "max", MAX_T, total=1, stream=io.StringIO(), start=started)
    assert progress.line().startswith("[02:0")


def test_an_infeasible_trial_is_counted_as_such_and_never_the_best() -> None:
    progress = Progress("val_acc", "max", MAX_T, total=3, stream=io.StringIO())
    _run(progress, "ok", [0.5, 0.6, 0.7, 0.75])
    trial = SimpleNamespace(trial_id="big", status="RUNNING", last_result={
        "epoch": 0, "val_acc": float("nan"), "infeasible": "latency_ms 0.74 > 0.6"})
    progress.on_trial_result(0, [trial], trial, trial.last_result)
    trial.status = "TERMINATED"
    progress.on_trial_complete(0, [trial], trial)
    assert "0 running, 1 completed, 0 pruned, 0 failed, 1 infeasible |" in progress.line()
    assert progress.best() == ("ok", 0.75)
