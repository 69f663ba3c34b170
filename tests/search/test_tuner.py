"""kdsearch.search.tuner: every scheduler choice, driven through the real Ray Tune."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from ray import tune

from .helpers import MAX_T, search_of, space_with, tune_run


@pytest.mark.parametrize(("scheduler", "stops_early"), [
    ({"name": "asha", "grace_period": 1, "reduction_factor": 2}, True),
    ({"name": "hyperband", "grace_period": 1, "reduction_factor": 2, "brackets": 2}, True),
    ({"name": "median", "grace_period": 1, "min_samples_required": 2}, True),
    # Every rung here ranks trials as the last epoch: once 2 trials show it, it stops.
    ({"name": "agreement", "grace_period": 1, "reduction_factor": 2, "min_pairs": 2}, True),
    ({"name": "none"}, False)])
def test_each_scheduler_drives_a_search(scheduler: dict[str, Any], stops_early: bool,
                                        ray_local: None, tmp_path: Path) -> None:
    from kdsearch.search.stopping import AgreementASHA
    from kdsearch.search.tuner import make_scheduler

    cfg = space_with(tmp_path, scheduler=scheduler)
    built = make_scheduler(cfg.search, MAX_T)  # no validation count: no noise margin
    expected = {"asha": tune.schedulers.ASHAScheduler,
                "hyperband": tune.schedulers.ASHAScheduler,
                "median": tune.schedulers.MedianStoppingRule,
                "agreement": AgreementASHA}.get(scheduler["name"])
    assert built is None if expected is None else isinstance(built, expected)
    if scheduler["name"] == "hyperband":
        # One bracket from epoch 1, one from epoch 2: rungs (milestones) per bracket.
        brackets = [line for line in built.debug_string().splitlines()
                    if line.startswith("Bracket:")]
        assert [[int(float(m)) for m in re.findall(r"Iter ([\d.]+)", b)]
                for b in brackets] == [[4, 2, 1], [4, 2]]
    results, searcher = tune_run(search_of("random"), tmp_path, built, num_samples=8)
    epochs = [int(r.metrics["epoch"]) for r in results]
    assert all(r.error is None for r in results) and len(epochs) == 8
    assert (min(epochs) < MAX_T) == stops_early
    assert MAX_T in epochs  # the best trials still train the full budget
    if isinstance(built, AgreementASHA):  # the instance Tune ran counted its own decisions
        assert sum(d["stopped"] for d in built.decisions()) == 8 - epochs.count(MAX_T)
    states = [t.state for t in searcher.study.trials]
    assert states.count(TrialState.COMPLETE) == epochs.count(MAX_T)
    assert states.count(TrialState.PRUNED) == 8 - epochs.count(MAX_T)

