"""kdsearch.config.schema: every value of the space file is typed and checked, and a bad one
is one line naming the dotted path; the settings of one trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsearch.config import trial_student
from kdsearch.config.load import load_space
from kdsearch.testing import write_tiny_space

from .spaces import problems, write_space


@pytest.mark.parametrize(("changes", "expected"), [
    ({"search.space.alpha": {"type": "gaussian", "low": 0, "high": 1}},
     "search.space.alpha.type: 'gaussian' is not one of uniform, loguniform, int, choice"),
    ({"search.num_samples": 0}, "search.num_samples: 0 input should be greater than or equal"),
    ({"search.metric": "accuracy"}, "search.metric: 'accuracy' input should be"),
    ({"search.bogus": 1}, "search.bogus: unknown key"),
    ({"student.epochs": "ten"}, "student.epochs: 'ten' input should be a valid integer"),
    ({"student.alpha": 2}, "student.alpha: 2 input should be less than or equal to 1"),
    ({"student.kd_loss": "dkdd"},
     "student.kd_loss: 'dkdd' input should be one of kd, dkd, dist (did you mean 'dkd'?)"),
    ({"student.dkd_warmup": 1.5}, "student.dkd_warmup: 1.5 input should be a valid integer"),
    ({"student.dist_tau": 0}, "student.dist_tau: 0 input should be greater than 0"),
    ({"teacher": None}, "teacher: missing (required)"),
    ({"data.format": "hdf5"}, "data.format: 'hdf5' input should be"),
    ({"data.synthetic.size": 33}, "data.synthetic.size: 33 must be even"),
    ({"experiment.name": "a b"}, "experiment.name: 'a b' must be 1-100 letters, digits"),
    ({"resources.gpus_per_trial": -1}, "resources.gpus_per_trial: -1 input should be greater"),
    ({"search.scheduler": {"name": "asha", "reduction_factor": 1}},
     "search.scheduler.reduction_factor: 1 input should be greater than or equal to 2"),
])
def test_bad_values_name_the_path(
        tmp_path: Path, changes: dict, expected: str) -> None:
    found = problems(write_space(tmp_path, **changes))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(("changes", "expected"), [
    ({"data.format": "annotation_list", "data.root": "d", "data.train_split": "null"},
     "data.train_split: must name the training list file for format annotation_list"),
    ({"data.format": "frame_folder", "data.root": "d", "data.train_split": "null"},
     "data.val_split: must be null when train_split is null"),
    ({"data.format": "frame_folder", "data.root": "d", "data.classes": ["a", "a"]},
     "data.classes: ['a', 'a'] repeats a; class names must be unique"),
    ({"data.val_fraction": 1.0}, "data.val_fraction: 1.0 input should be less than 1"),
    ({"data.short_videos": "loop"}, "data.short_videos: 'loop' input should be one of pad, skip"),
    ({"data.format": "frames"}, "data.format: 'frames' input should be"),
])
def test_bad_data_sections(tmp_path: Path, changes: dict, expected: str) -> None:
    (tmp_path / "d").mkdir()
    nulls = tuple(f"{k}=null" for k, v in changes.items() if v == "null")  # None deletes
    found = problems(write_space(tmp_path, **changes), nulls)
    assert any(p.startswith(expected) for p in found), found


def test_settings_take_sampled_values_over_student_defaults(tmp_path: Path) -> None:
    cfg = load_space(write_tiny_space(tmp_path), cwd=tmp_path)
    settings = trial_student(cfg.student, {"alpha": 0.7, "batch_size": 4.0})
    assert settings.alpha == 0.7 and settings.batch_size == 4
    assert settings.backbone == cfg.student.backbone


def test_a_scheduler_without_a_name_tunes_the_default() -> None:
    from kdsearch.config import Agreement, Search

    scheduler = Search.model_validate({"scheduler": {"grace_period": 3}}).scheduler
    assert scheduler == Agreement(grace_period=3)
    named = Search.model_validate({"scheduler": {"name": "asha", "grace_period": 3}}).scheduler
    assert named.name == "asha"
