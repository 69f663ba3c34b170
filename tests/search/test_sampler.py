"""kdsearch.search.sampler: Optuna must learn the truth about trials under ASHA (PRUNED, FAIL
or COMPLETE), and runs the given points first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from kdsearch.config import Search
from kdsearch.search.sampler import make_searcher
from kdsearch.search.space import make_sampler, optuna_space

from .helpers import MAX_T, search_of, tune_run


def objective(config: dict[str, Any]) -> None:
    if config["x"] < 0.1:
        raise ValueError("diverged")  # a failing trial
    for epoch in range(1, MAX_T + 1):
        tune.report({"epoch": epoch, "val_acc": config["x"] * epoch / MAX_T})


def run(searcher: Any, tmp_path: Path) -> tune.ResultGrid:
    tuner = tune.Tuner(
        objective,
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", search_alg=searcher, num_samples=12,
            max_concurrent_trials=2,
            scheduler=tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=MAX_T,
                                                   grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    return tuner.fit()


SEARCH = Search.model_validate({"space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
                                "seed": 3})


def test_early_stopped_trials_are_pruned(ray_local: None, tmp_path: Path) -> None:
    searcher = make_searcher(SEARCH, max_t=MAX_T)
    results = run(searcher, tmp_path)
    epochs = {r.metrics.get("trial_id"): r.metrics.get("epoch", 0) for r in results}
    errors = sum(r.error is not None for r in results)
    states = [t.state for t in searcher.study.trials]
    assert len(states) == 12
    assert states.count(TrialState.COMPLETE) == sum(e == MAX_T for e in epochs.values())
    assert states.count(TrialState.FAIL) == errors
    assert states.count(TrialState.PRUNED) == 12 - errors - states.count(TrialState.COMPLETE)
    assert states.count(TrialState.PRUNED) >= 1 and states.count(TrialState.COMPLETE) >= 1
    for trial in searcher.study.trials:
        if trial.state == TrialState.PRUNED:
            # every epoch it trained is kept as an intermediate value, fewer than max_t
            assert 1 <= len(trial.intermediate_values) < MAX_T
        if trial.state == TrialState.COMPLETE:
            assert len(trial.intermediate_values) == MAX_T
            assert trial.value == pytest.approx(trial.params["x"])


def test_stock_optuna_search_reports_pruned_trials_as_complete(ray_local: None,
                                                               tmp_path: Path) -> None:
    # Why make_searcher exists: the stock searcher calls one-epoch trials COMPLETE.
    storage = optuna.storages.InMemoryStorage()  # its study, read back through Optuna's API
    stock = OptunaSearch(space=optuna_space(SEARCH), metric="val_acc", mode="max",
                         sampler=make_sampler(SEARCH), study_name="stock", storage=storage)
    results = run(stock, tmp_path)
    stopped_early = sum(r.error is None and r.metrics.get("epoch", 0) < MAX_T for r in results)
    errors = sum(r.error is not None for r in results)
    states = [t.state for t in optuna.load_study(study_name="stock", storage=storage).trials]
    assert stopped_early >= 1
    assert states.count(TrialState.COMPLETE) == 12 - errors  # stopped-early ones included
    assert states.count(TrialState.PRUNED) == 0


def test_points_to_evaluate_run_first(ray_local: None, tmp_path: Path) -> None:
    # SoccerKDNet's hand-picked setting as the first trial.
    search = Search.model_validate({**search_of("tpe").model_dump(),
                                    "points_to_evaluate": [{"alpha": 0.5, "lr": 0.001}]})
    results, searcher = tune_run(search, tmp_path, num_samples=3)
    first = searcher.study.trials[0]
    assert first.params == {"alpha": 0.5, "lr": 0.001}
    assert {"alpha": 0.5, "lr": 0.001} in [r.config for r in results]



def test_an_infeasible_student_is_told_to_tpe_as_a_constraint_violation() -> None:
    """The searcher as Tune drives it (suggest, then on_trial_complete): the infeasible
    trial is PRUNED with its constraint values set (TPE reads them), a feasible one COMPLETE
    with values <= 0; TPE then ranks the infeasible trial below the feasible one."""
    from kdsearch.config import COST_METRICS, Search
    from kdsearch.search.sampler import make_searcher

    search = Search.model_validate({
        "space": {"backbone": {"type": "choice", "values": ["tiny3d", "tiny3d_wide"]}},
        "constraints": {"params_m": 0.2, "latency_ms": 50}})
    searcher = make_searcher(search, max_t=2)
    cost = dict.fromkeys(COST_METRICS, 1.0)
    searcher.suggest("wide")
    searcher.on_trial_complete("wide", {**cost, "student_params": 427748.0, "epoch": 0,
                                        "val_acc": float("nan"),
                                        "infeasible": "params_m 0.4277 > 0.2"})
    searcher.suggest("small")
    searcher.on_trial_complete("small", {**cost, "student_params": 107892.0, "epoch": 2,
                                         "val_acc": 0.5})
    wide, small = searcher.study.trials
    assert wide.state == TrialState.PRUNED and wide.values is None
    assert small.state == TrialState.COMPLETE and small.value == 0.5
    assert wide.constraints == pytest.approx({"params_m": 0.427748 - 0.2,
                                              "latency_ms": 1.0 - 50})
    assert small.constraints == pytest.approx({"params_m": 0.107892 - 0.2,
                                               "latency_ms": 1.0 - 50})
    from optuna.samplers._tpe.sampler import _split_trials

    below, above = _split_trials(searcher.study, [wide, small], n_below=1)
    assert below == [small] and above == [wide]


def test_a_search_with_objectives_tells_optuna_every_value() -> None:
    from kdsearch.config import Search
    from kdsearch.search.sampler import make_searcher

    search = Search.model_validate({
        "space": {"alpha": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "objectives": [{"metric": "val_acc", "mode": "max"},
                       {"metric": "latency_ms", "mode": "min"}]})
    assert (search.metric, search.mode, search.scheduler.name) == ("val_acc", "max", "none")
    searcher = make_searcher(search, max_t=2)
    assert searcher.study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                         optuna.study.StudyDirection.MINIMIZE]
    for trial_id, acc, ms in (("a", 0.5, 3.0), ("b", 0.7, float("nan"))):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"epoch": 1, "val_acc": acc, "latency_ms": ms})
        searcher.on_trial_complete(trial_id, {"epoch": 2, "val_acc": acc, "latency_ms": ms})
    done, broken = searcher.study.trials
    assert done.state == TrialState.COMPLETE and done.values == [0.5, 3.0]
    assert broken.state == TrialState.FAIL  # a value that is not finite never ranks
