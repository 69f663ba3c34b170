"""kdsearch.config.checks: the rules across fields of the search space (ranges, searchable
settings, conditions, points to evaluate, the sampler) and problems as one line each."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from kdsearch.config import trial_student
from kdsearch.search.space import DefineByRun
from kdsearch.testing import TINY_SPACE

from .spaces import problems, search_problems, tiny_space_with, write_space


@pytest.mark.parametrize(("changes", "expected"), [
    ({"search.space.alpha": {"type": "uniform", "low": 0.0, "high": 1.5}},
     "search.space.alpha.high: 1.5 is outside [0, 1]"),
    ({"search.space.alpha": {"type": "uniform", "low": 1.5, "high": 2.0}},
     "search.space.alpha.low: 1.5 is outside [0, 1]"),
    ({"search.space.lr": {"type": "loguniform", "low": 0.0, "high": 0.1}},
     "search.space.lr.low: 0.0 must be > 0 for a log scale"),
    ({"search.space.lr": {"type": "uniform", "low": 0.1, "high": 0.01}},
     "search.space.lr.high: 0.01 must be greater than low (0.1)"),
    ({"search.space.backbone": {"type": "choice", "values": ["tiny3d", "resnet9000"]}},
     "search.space.backbone.values[1]: 'resnet9000' is not a registered student"),
    ({"search.space.backbone": {"type": "uniform", "low": 0, "high": 1}},
     "search.space.backbone.type: 'uniform' must be 'choice'"),
    ({"search.space.dropout": {"type": "uniform", "low": 0, "high": 1}},
     "search.space.dropout: unknown setting (searchable: alpha"),
    # kd_loss is categorical (a Literal): only a choice of its names searches it.
    ({"search.space.kd_loss": {"type": "uniform", "low": 0, "high": 1}},
     "search.space.kd_loss.type: 'uniform' must be 'choice' for a categorical setting"),
    ({"search.space.kd_loss": {"type": "choice", "values": ["kd", "dkdd"]}},
     "search.space.kd_loss.values[1]: 'dkdd' is not one of kd, dkd, dist (did you mean 'dkd'?)"),
    ({"search.space.optimizer": {"type": "int", "low": 0, "high": 1}},
     "search.space.optimizer.type: 'int' must be 'choice' for a categorical setting"),
    ({"search.space.dkd_beta": {"type": "uniform", "low": -1, "high": 8}},
     "search.space.dkd_beta.low: -1.0 must be >= 0"),
    ({"search.space.dkd_warmup": {"type": "int", "low": -1, "high": 3}},
     "search.space.dkd_warmup.low: -1 must be an integer >= 0"),
    ({"search.space.dist_tau": {"type": "uniform", "low": 0, "high": 4}},
     "search.space.dist_tau.low: 0.0 must be > 0"),
    ({"search.space.dist_gamma": {"type": "choice", "values": [1, -2]}},
     "search.space.dist_gamma.values[1]: -2 must be >= 0"),
])
def test_bad_search_spaces_name_the_path(
        tmp_path: Path, changes: dict, expected: str) -> None:
    found = problems(write_space(tmp_path, **changes))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(("changes", "expected"), [
    ({"search.num_sampels": 3}, "search.num_sampels: unknown key (did you mean 'num_samples'?)"),
    ({"student.backbon": "tiny3d"}, "student.backbon: unknown key (did you mean 'backbone'?)"),
    ({"search.scheduler": {"name": "asha", "grace_perid": 2}},
     "search.scheduler.grace_perid: unknown key (did you mean 'grace_period'?)"),
    ({"search.space.alpha": {"type": "unifrom", "low": 0, "high": 1}},
     "search.space.alpha.type: 'unifrom' is not one of uniform, loguniform, int, choice "
     "(did you mean 'uniform'?)"),
    ({"search.sampler": "tpx"},
     "search.sampler: 'tpx' input should be one of tpe, random, cmaes, qmc (did you mean 'tpe'?)"),
    ({"search.space.alhpa": {"type": "uniform", "low": 0, "high": 1}},
     "search.space.alhpa: unknown setting (searchable: alpha, temperature, lr, backbone, "
     "weight_decay, momentum, batch_size, optimizer, kd_loss, dkd_alpha, dkd_beta, dkd_warmup, "
     "dist_tau, dist_beta, dist_gamma) (did you mean 'alpha'?)"),
    ({"teacher.model": "smal3d"}, "teacher.model: 'smal3d' is not a registered teacher"),
])
def test_misspelt_names_get_the_closest_valid_one(tmp_path: Path, changes: dict,
                                                  expected: str) -> None:
    found = problems(write_space(tmp_path, **changes))
    assert expected in found or any(p.startswith(expected) for p in found), found
    if "teacher.model" in changes:
        (line,) = [p for p in found if p.startswith("teacher.model")]
        assert line.endswith("(did you mean 'small3d'?)")


def test_a_huge_bad_value_is_quoted_short(tmp_path: Path) -> None:
    path = write_space(tmp_path, **{"experiment.name": "a b " * 30_000})
    (line,) = problems(path)
    assert line.startswith("experiment.name: 'a b a b") and len(line) < 300


def test_cmaes_refuses_a_space_with_a_choice(tmp_path: Path) -> None:
    found = search_problems(tmp_path, sampler="cmaes")
    assert found == ["search.space.backbone: is a choice; search.sampler 'cmaes' needs a "
                     "continuous space (uniform, loguniform or int, unconditional): use 'tpe'"]
    assert "search.sampler: 'simplex'" in search_problems(tmp_path, sampler="simplex")[0]


def test_conditions_are_validated(tmp_path: Path) -> None:
    space = {**TINY_SPACE["search"]["space"],
             "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2,
                    "when": {"backbone": ["tiny3d", "resnet"]}},
             "momentum": {"type": "uniform", "low": 0.5, "high": 0.9, "when": {"lr": [0.1]}}}
    assert search_problems(tmp_path, space=space) == [
        "search.space.lr.when.backbone: 'resnet' is not one of search.space.backbone.values "
        "['tiny3d', 'tiny_r2plus1d']",
        "search.space.momentum.when.lr: must name a searched choice declared before "
        "'momentum'"]


def test_points_to_evaluate_are_validated(tmp_path: Path) -> None:
    found = search_problems(tmp_path, points_to_evaluate=[{"alpha": 1.5, "gamma": 1},
                                                   {"backbone": "resnet"}])
    assert found == [
        "search.points_to_evaluate[0].alpha: 1.5 is outside [0.1, 0.9]",
        "search.points_to_evaluate[0].gamma: not a searched setting (searched: alpha, "
        "temperature, backbone)",
        "search.points_to_evaluate[1].backbone: 'resnet' is not one of ['tiny3d', "
        "'tiny_r2plus1d']"]


def test_a_loss_setting_is_sampled_only_for_its_loss(tmp_path: Path) -> None:
    # From the space file through the checks to Optuna's define-by-run space and back into a
    # trial's student settings.
    space = {"kd_loss": {"type": "choice", "values": ["kd", "dkd", "dist"]},
             "dkd_beta": {"type": "uniform", "low": 1, "high": 8, "when": {"kd_loss": ["dkd"]}},
             "dist_tau": {"type": "loguniform", "low": 1, "high": 4,
                          "when": {"kd_loss": ["dist"]}}}
    cfg = tiny_space_with(tmp_path, space=space)
    define = DefineByRun(cfg.search)

    def objective(trial: optuna.Trial) -> float:
        define(trial)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=30)
    kinds = [t.params["kd_loss"] for t in study.trials]
    assert set(kinds) == {"kd", "dkd", "dist"}
    for kind, trial in zip(kinds, study.trials, strict=True):
        assert ("dkd_beta" in trial.params) == (kind == "dkd"), trial.params
        assert ("dist_tau" in trial.params) == (kind == "dist"), trial.params
        settings = trial_student(cfg.student, trial.params)
        assert settings.kd_loss == kind
        # Not sampled: the student's fixed value (the default) holds.
        assert settings.dkd_beta == trial.params.get("dkd_beta", 8.0)
        assert 1 <= settings.dkd_beta <= 8
