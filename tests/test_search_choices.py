"""Every sampler and scheduler choice, conditional settings, and warm starts, each driven
through the real Ray Tune and Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray import tune

from kdsearch.config import ConfigError, Search, SpaceConfig
from kdsearch.config.load import load_space
from kdsearch.search.sampler import make_searcher
from kdsearch.search.space import make_sampler, warm_trials
from kdsearch.testing import TINY_SPACE, write_tiny_space

MAX_T = 4


def objective(config: dict[str, Any]) -> None:
    """Best at alpha 0.3, lr 1e-3; checkpoints each epoch so HyperBand can pause it."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    quality = 1 - abs(config["alpha"] - 0.3) - 0.1 * abs(config.get("lr", 1e-3) - 1e-3) * 1e3
    for epoch in range(start + 1, MAX_T + 1):
        folder = Path(tune.get_context().get_trial_dir()) / f"ckpt-{epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "epoch").write_text(str(epoch))
        tune.report({"epoch": epoch, "val_acc": quality * epoch / MAX_T},
                    checkpoint=tune.Checkpoint.from_directory(str(folder)))


def tune_run(search: Search, tmp_path: Path, scheduler: Any = None, num_samples: int = 6,
             warm: list[optuna.trial.FrozenTrial] | None = None) -> tuple[Any, Any]:
    searcher = make_searcher(search, MAX_T, warm or [])
    tuner = tune.Tuner(objective, tune_config=tune.TuneConfig(
        metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
        num_samples=num_samples, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    return tuner.fit(), searcher


def search_of(sampler: str, **space: Any) -> Search:
    space = space or {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9},
                      "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    return Search.model_validate({"space": space, "sampler": sampler, "seed": 1})


def space_with(tmp_path: Path, **search: Any) -> SpaceConfig:
    write_tiny_space(tmp_path, search={**TINY_SPACE["search"], **search})
    return load_space(tmp_path / "space.yaml", cwd=tmp_path)


def problems(tmp_path: Path, **search: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        space_with(tmp_path, **search)
    return err.value.problems


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


def test_cmaes_refuses_a_space_with_a_choice(tmp_path: Path) -> None:
    found = problems(tmp_path, sampler="cmaes")
    assert found == ["search.space.backbone: is a choice; search.sampler 'cmaes' needs a "
                     "continuous space (uniform, loguniform or int, unconditional): use 'tpe'"]
    assert "search.sampler: 'simplex'" in problems(tmp_path, sampler="simplex")[0]


@pytest.mark.parametrize(("scheduler", "stops_early"), [
    ({"name": "asha", "grace_period": 1, "reduction_factor": 2}, True),
    ({"name": "hyperband", "grace_period": 1, "reduction_factor": 2, "brackets": 2}, True),
    ({"name": "median", "grace_period": 1, "min_samples_required": 2}, True),
    ({"name": "none"}, False)])
def test_each_scheduler_drives_a_search(scheduler: dict[str, Any], stops_early: bool,
                                        ray_local: None, tmp_path: Path) -> None:
    from kdsearch.search.tuner import make_scheduler

    cfg = space_with(tmp_path, scheduler=scheduler)
    cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"epochs": MAX_T})})
    built = make_scheduler(cfg)
    expected = {"asha": tune.schedulers.ASHAScheduler,
                "hyperband": tune.schedulers.ASHAScheduler,
                "median": tune.schedulers.MedianStoppingRule}.get(scheduler["name"])
    assert built is None if expected is None else isinstance(built, expected)
    if scheduler["name"] == "hyperband":
        # One bracket from epoch 1, one from epoch 2: rungs (milestones) per bracket.
        assert [[rung[0] for rung in b._rungs] for b in built._brackets] == [[4, 2, 1], [4, 2]]
    results, searcher = tune_run(search_of("random"), tmp_path, built, num_samples=8)
    epochs = [int(r.metrics["epoch"]) for r in results]
    assert all(r.error is None for r in results) and len(epochs) == 8
    assert (min(epochs) < MAX_T) == stops_early
    assert MAX_T in epochs  # the best trials still train the full budget
    states = [t.state for t in searcher.study.trials]
    assert states.count(TrialState.COMPLETE) == epochs.count(MAX_T)
    assert states.count(TrialState.PRUNED) == 8 - epochs.count(MAX_T)


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
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._group


def test_conditions_are_validated(tmp_path: Path) -> None:
    space = {**TINY_SPACE["search"]["space"],
             "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2,
                    "when": {"backbone": ["tiny3d", "resnet"]}},
             "momentum": {"type": "uniform", "low": 0.5, "high": 0.9, "when": {"lr": [0.1]}}}
    assert problems(tmp_path, space=space) == [
        "search.space.lr.when.backbone: 'resnet' is not one of search.space.backbone.values "
        "['tiny3d', 'tiny_r2plus1d']",
        "search.space.momentum.when.lr: must name a searched choice declared before "
        "'momentum'"]


def test_points_to_evaluate_run_first(ray_local: None, tmp_path: Path) -> None:
    # SoccerKDNet's hand-picked setting as the first trial.
    search = Search.model_validate({**search_of("tpe").model_dump(),
                                    "points_to_evaluate": [{"alpha": 0.5, "lr": 0.001}]})
    results, searcher = tune_run(search, tmp_path, num_samples=3)
    first = searcher.study.trials[0]
    assert first.params == {"alpha": 0.5, "lr": 0.001}
    assert {"alpha": 0.5, "lr": 0.001} in [r.config for r in results]


def test_points_to_evaluate_are_validated(tmp_path: Path) -> None:
    found = problems(tmp_path, points_to_evaluate=[{"alpha": 1.5, "gamma": 1},
                                                   {"backbone": "resnet"}])
    assert found == [
        "search.points_to_evaluate[0].alpha: 1.5 is outside [0.1, 0.9]",
        "search.points_to_evaluate[0].gamma: not a searched setting (searched: alpha, "
        "temperature, backbone)",
        "search.points_to_evaluate[1].backbone: 'resnet' is not one of ['tiny3d', "
        "'tiny_r2plus1d']"]


def _earlier_experiment(store: str) -> None:
    """Completed, pruned and foreign trials, as an earlier search leaves them."""
    client = MlflowClient(store)
    experiment = client.create_experiment("earlier")
    rows = [("completed", {"alpha": "0.3", "lr": "0.001", "backbone": "tiny3d"}, 0.9),
            ("completed", {"alpha": "0.7", "lr": "0.005", "backbone": "tiny3d"}, 0.6),
            ("completed", {"alpha": "0.95", "lr": "0.001", "backbone": "tiny3d"}, 0.5),
            ("pruned", {"alpha": "0.1", "lr": "0.001", "backbone": "tiny3d"}, 0.4)]
    for status, params, value in rows:
        run = client.create_run(experiment, tags={"kdsearch.role": "trial",
                                                  "kdsearch.status": status}).info.run_id
        for key, text in params.items():
            client.log_param(run, key, text)
        client.log_metric(run, "val_acc", value, step=4)
        client.set_terminated(run)


def test_a_warm_start_tells_the_sampler_an_earlier_experiment(ray_local: None,
                                                              tmp_path: Path) -> None:
    from kdsearch.search.driver import _warm_start

    store = f"sqlite:///{tmp_path / 'earlier.db'}"
    _earlier_experiment(store)
    cfg = space_with(tmp_path, space={"alpha": {"type": "uniform", "low": 0.0, "high": 0.9},
                                      "lr": {"type": "loguniform", "low": 1e-4,
                                             "high": 1e-2}},
                     warm_start={"experiment": "earlier", "tracking_uri": store})
    said: list[str] = []
    warm = _warm_start(MlflowClient(cfg.tracking_uri), cfg, said.append)
    # Completed trials only; alpha 0.95 lies outside this space and is dropped from its trial.
    assert said == ["warm start: 3 completed trials of experiment 'earlier' told to the "
                    "sampler"]
    assert sorted(((t.params.get("alpha"), t.value) for t in warm), key=lambda p: -p[1]) == [
        (0.3, 0.9), (0.7, 0.6), (None, 0.5)]
    results, searcher = tune_run(search_of("tpe"), tmp_path / "tune", num_samples=3,
                                 warm=warm)
    told = [t for t in searcher.study.trials if t.user_attrs.get("warm_start")]
    assert len(told) == 3 and all(t.state == TrialState.COMPLETE for t in told)
    assert len(results) == 3  # and three new trials ran


def test_a_warm_start_from_a_missing_experiment_is_a_config_error(tmp_path: Path) -> None:
    from kdsearch.search.driver import _warm_start

    cfg = space_with(tmp_path, warm_start={"experiment": "nope"})
    with pytest.raises(ConfigError) as err:
        _warm_start(MlflowClient(cfg.tracking_uri), cfg, print)
    assert err.value.problems == [
        f"search.warm_start.experiment: 'nope' is not an experiment of {cfg.tracking_uri}"]


def test_warm_trials_parse_mlflow_strings() -> None:
    search = search_of("tpe", backbone={"type": "choice", "values": ["tiny3d", "x3d_xs"]},
                       batch_size={"type": "int", "low": 4, "high": 16})
    (trial,) = warm_trials(search, [({"backbone": "x3d_xs", "batch_size": "8"}, 0.7)])
    assert trial.params == {"backbone": "x3d_xs", "batch_size": 8}
