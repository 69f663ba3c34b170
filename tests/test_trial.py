"""One configuration trains without Ray: reports per epoch, checkpoints, resumes, fails loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdsearch.config import SpaceConfig, trial_student
from kdsearch.config.load import load_space
from kdsearch.data.dataset import DatasetSplits, load_dataset, prepare_data
from kdsearch.testing import write_tiny_space
from kdsearch.train.loop import NonFiniteLossError
from kdsearch.train.teacher import prepare_teacher
from kdsearch.train.trial import CHECKPOINT_FILE, TrialContext, fit


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> TrialContext:
    folder = tmp_path_factory.mktemp("trial")
    cfg = load_space(write_tiny_space(folder), cwd=folder)
    data = dataset(cfg)
    teacher = prepare_teacher(cfg, data, log=lambda _: None)
    return TrialContext(cfg, data.classes, str(teacher.path), data.train, data.val)


def dataset(cfg: SpaceConfig) -> DatasetSplits:
    prepare_data(cfg.data)
    return load_dataset(cfg.data, cfg.student.clip, Path(cfg.storage), log=lambda _: None)


class Recorder:
    def __init__(self, keep: Path) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.keep = keep

    def __call__(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        self.metrics.append(metrics)
        target = self.keep / f"epoch{metrics['epoch']}"
        target.mkdir()
        (target / CHECKPOINT_FILE).write_bytes((checkpoint / CHECKPOINT_FILE).read_bytes())


def test_fit_reports_every_epoch_with_a_checkpoint(context: TrialContext, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    report = Recorder(tmp_path)
    fit(context, {"alpha": 0.5, "temperature": 2.0, "backbone": "tiny3d"}, report)
    assert [m["epoch"] for m in report.metrics] == [1, 2]
    for m in report.metrics:
        assert {"val_acc", "val_video_acc", "val_loss", "train_loss", "train_ce",
                "train_kd"} <= set(m)
        assert 0 <= m["val_acc"] <= 1 and m["train_kd"] > 0
        assert m["train_loss"] == pytest.approx(0.5 * m["train_ce"] + 0.5 * m["train_kd"],
                                                rel=1e-4)
    saved = torch.load(tmp_path / "epoch2" / CHECKPOINT_FILE, weights_only=True)
    assert saved["epoch"] == 2 and saved["settings"]["backbone"] == "tiny3d"


def test_resume_continues_after_the_checkpoint(context: TrialContext, tmp_path: Path) -> None:
    first = Recorder(tmp_path)
    fit(context, {"alpha": 0.0}, first)
    again = Recorder(tmp_path / "again")
    (tmp_path / "again").mkdir()
    fit(context, {"alpha": 0.0}, again, resume=tmp_path / "epoch1")
    assert [m["epoch"] for m in again.metrics] == [2]
    # alpha = 0 trains without the teacher: the KD term is never computed
    assert first.metrics[0]["train_kd"] == 0.0
    # the learning-rate schedule continues where it stopped
    assert again.metrics[0]["lr"] == pytest.approx(first.metrics[1]["lr"])
    assert first.metrics[1]["lr"] < first.metrics[0]["lr"]


def test_a_diverging_trial_stops_with_the_reason(context: TrialContext, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="training loss became"):
        fit(context, {"lr": 1e30, "optimizer": "sgd", "alpha": 0.5}, Recorder(tmp_path))


def test_settings_take_sampled_values_over_student_defaults(context: TrialContext) -> None:
    settings = trial_student(context.cfg.student, {"alpha": 0.7, "batch_size": 4.0})
    assert settings.alpha == 0.7 and settings.batch_size == 4
    assert settings.backbone == context.cfg.student.backbone


def test_teacher_is_reused_for_the_same_settings_and_data(context: TrialContext) -> None:
    data = dataset(context.cfg)
    again = prepare_teacher(context.cfg, data, log=lambda _: None)
    assert again.reused and str(again.path) == context.teacher_path
    other = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"epochs": 2})})
    assert prepare_teacher(other, data, log=lambda _: None).path != again.path
    cache_only = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"cache_views": 7, "cache": False})})
    assert prepare_teacher(cache_only, data, log=lambda _: None).path == again.path


def test_teacher_weights_that_do_not_fit_are_a_config_error(context: TrialContext,
                                                            tmp_path: Path) -> None:
    from kdsearch.config import ConfigError

    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    cfg = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"weights": str(bad), "epochs": 3})})
    with pytest.raises(ConfigError, match=r"^teacher.weights: .*does not fit model 'small3d'"):
        prepare_teacher(cfg, dataset(cfg), log=lambda _: None)


@pytest.mark.parametrize("name", ["resnet18_tsn", "tiny3d", "x3d_xs"])
def test_channels_last_weights_keep_every_students_output(name: str) -> None:
    from kdsearch.models import build_model
    from kdsearch.train.loop import channels_last_weights

    torch.manual_seed(0)
    model = build_model(name, 3, "none", "student").eval()
    clips = torch.rand(2, 3, 4, 32, 32)
    with torch.no_grad():
        before = model(clips)
        channels_last_weights(model)
        after = model(clips.contiguous(memory_format=torch.channels_last_3d))
    convs = [p for p in model.parameters() if p.dim() >= 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d if p.dim() == 5
                                         else torch.channels_last) for p in convs)
    assert torch.allclose(before, after, atol=1e-5)
