"""kdsearch.search.space: every sampler choice and conditional settings, driven through the
real Ray Tune and Optuna; earlier trials told to a sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from kdsearch.search.space import make_sampler, warm_trials

from .helpers import search_of, tune_run


@pytest.mark.parametrize(("sampler", "kind"), [
    ("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
    ("cmaes", optuna.samplers.CmaEsSampler), ("qmc", optuna.samplers.QMCSampler)])
def test_each_sampler_drives_a_search(sampler: str, kind: type, ray_local: None,
                                      tmp_path: Path) -> None:
    search = search_of(sampler)
    assert isinstance(make_sampler(search), kind)
    results, searcher = tune_run(search, tmp_path)
    assert isinstance(searcher.study.sampler, kind)
    configs = [r.config for r in results]
    assert len(configs) == 6 and all(r.error is None for r in results)
    assert all(0 <= c["alpha"] <= 0.9 and 1e-4 <= c["lr"] <= 1e-2 for c in configs)
    assert len({c["alpha"] for c in configs}) == 6  # six different points
    states = [t.state for t in searcher.study.trials]
    assert states == [TrialState.COMPLETE] * 6  # no scheduler: every trial at full budget


def test_a_conditional_setting_is_sampled_only_under_its_condition(ray_local: None,
                                                                   tmp_path: Path) -> None:
    search = search_of("tpe", optimizer={"type": "choice", "values": ["sgd", "adamw"]},
                       alpha={"type": "uniform", "low": 0.0, "high": 0.9},
                       momentum={"type": "uniform", "low": 0.5, "high": 0.99,
                                 "when": {"optimizer": ["sgd"]}})
    results, searcher = tune_run(search, tmp_path, num_samples=10)
    configs = [r.config for r in results]
    assert {c["optimizer"] for c in configs} == {"sgd", "adamw"}
    for config in configs:
        assert ("momentum" in config) == (config["optimizer"] == "sgd"), config
    sampler = searcher.study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)  # grouped: see below


def test_conditional_settings_make_tpe_model_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    # group=True: TPE models the settings that occur together instead of sampling the
    # conditional ones independently.
    made: list[dict[str, Any]] = []

    class Recording(optuna.samplers.TPESampler):
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", Recording)
    conditional = search_of("tpe", optimizer={"type": "choice", "values": ["sgd", "adamw"]},
                            momentum={"type": "uniform", "low": 0.5, "high": 0.99,
                                      "when": {"optimizer": ["sgd"]}})
    assert isinstance(make_sampler(conditional), Recording)
    assert isinstance(make_sampler(search_of("tpe")), Recording)
    assert [(kw["group"], kw["multivariate"]) for kw in made] == [(True, True), (False, True)]


def test_warm_trials_parse_mlflow_strings() -> None:
    search = search_of("tpe", backbone={"type": "choice", "values": ["tiny3d", "x3d_xs"]},
                       batch_size={"type": "int", "low": 4, "high": 16})
    (trial,) = warm_trials(search, [({"backbone": "x3d_xs", "batch_size": "8"}, 0.7)])
    assert trial.params == {"backbone": "x3d_xs", "batch_size": 8}
