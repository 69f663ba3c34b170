"""kdsearch.train.trial: one configuration trains without Ray, reports per epoch with a
checkpoint, resumes from one, and fails loudly."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kdsearch.train import loop as loop_module
from kdsearch.train import trial as trial_module
from kdsearch.train.cache import prepare_cache
from kdsearch.train.loop import NonFiniteLossError, NonFiniteMetricError
from kdsearch.train.trial import CHECKPOINT_FILE, TrialContext, fit

from .helpers import Recorder, dataset


def _saved(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    return state


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
    saved = _saved(tmp_path / "epoch2")
    assert saved["epoch"] == 2 and saved["settings"]["backbone"] == "tiny3d"


def test_resume_continues_after_the_checkpoint(context: TrialContext, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = Recorder(tmp_path)
    fit(context, {"alpha": 0.0}, first)
    # What the training loop of the resumed trial starts from.
    started: list[tuple[dict[str, Any], dict[str, Any], int]] = []
    train_epochs = trial_module.train_epochs

    def recording(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                  **kwargs: Any) -> dict[str, Any]:
        started.append((copy.deepcopy(model.state_dict()),
                        copy.deepcopy(optimizer.state_dict()), kwargs["start"]))
        return train_epochs(model, optimizer, schedule, **kwargs)

    monkeypatch.setattr(trial_module, "train_epochs", recording)
    again = Recorder(tmp_path / "again")
    (tmp_path / "again").mkdir()
    fit(context, {"alpha": 0.0}, again, resume=tmp_path / "epoch1")
    assert [m["epoch"] for m in again.metrics] == [2]
    # It starts from epoch 1's weights and optimiser state, not from a new student.
    (weights, optimizer_state, start), = started
    saved = _saved(tmp_path / "epoch1")
    assert start == 1
    torch.testing.assert_close(weights, saved["student"])
    torch.testing.assert_close(optimizer_state["state"], saved["optimizer"]["state"])
    assert any(not torch.equal(weights[k], v)
               for k, v in _saved(tmp_path / "epoch2")["student"].items())
    # alpha = 0 trains without the teacher: the KD term is never computed
    assert first.metrics[0]["train_kd"] == 0.0
    # the learning-rate schedule continues where it stopped
    assert again.metrics[0]["lr"] == pytest.approx(first.metrics[1]["lr"])
    assert first.metrics[1]["lr"] < first.metrics[0]["lr"]


class _Reseeding(Recorder):
    def __call__(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        super().__call__(metrics, checkpoint)
        torch.manual_seed(2)  # the next epoch's dropout, as the resumed run below draws it


def test_a_resumed_trial_ends_as_one_that_never_stopped(
        context: TrialContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # From the cache an epoch's batches depend only on the seed and the epoch. Dropout draws
    # from torch's global generator, which a checkpoint does not hold: both runs reseed it
    # before epoch 2.
    cache = prepare_cache(context.cfg, dataset(context.cfg), context.teacher_path,
                          log=lambda _: None)
    ctx = dataclasses.replace(context, cache=cache)
    settings = {"alpha": 0.5, "temperature": 2.0}
    (tmp_path / "whole").mkdir()
    whole = _Reseeding(tmp_path / "whole")
    fit(ctx, settings, whole)

    train_epochs = trial_module.train_epochs

    def seeded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        torch.manual_seed(2)
        return train_epochs(*args, **kwargs)

    monkeypatch.setattr(trial_module, "train_epochs", seeded)
    (tmp_path / "resumed").mkdir()
    resumed = Recorder(tmp_path / "resumed")
    fit(ctx, settings, resumed, resume=tmp_path / "whole" / "epoch1")
    assert [m["epoch"] for m in resumed.metrics] == [2]
    end, expected = _saved(tmp_path / "resumed" / "epoch2"), _saved(tmp_path / "whole" / "epoch2")
    torch.testing.assert_close(end["student"], expected["student"])
    torch.testing.assert_close(end["optimizer"]["state"], expected["optimizer"]["state"])
    assert resumed.metrics[0]["train_loss"] == pytest.approx(whole.metrics[1]["train_loss"])
    assert resumed.metrics[0]["val_loss"] == pytest.approx(whole.metrics[1]["val_loss"])


def test_another_seed_trains_another_student(context: TrialContext, tmp_path: Path) -> None:
    """``seed`` (kdsearch.search.baseline's further runs) replaces ``search.seed``; None keeps
    it, so a trial and its rerun on the search's seed are the same training."""
    torch.set_num_threads(1)
    ends = {}
    for seed in (None, context.cfg.search.seed, context.cfg.search.seed + 1):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        fit(context, {"alpha": 0.0}, Recorder(folder), seed=seed)
        ends[seed] = _saved(folder / "epoch2")["student"]
    torch.testing.assert_close(ends[None], ends[context.cfg.search.seed])
    other = ends[context.cfg.search.seed + 1]
    assert any(not torch.equal(value, other[name]) for name, value in ends[None].items())


def test_a_diverging_trial_stops_with_the_reason(context: TrialContext, tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="training loss became"):
        fit(context, {"lr": 1e30, "optimizer": "sgd", "alpha": 0.5}, Recorder(tmp_path))


def test_divergence_in_the_last_step_of_an_epoch_fails_the_trial(context: TrialContext,
                                                                 tmp_path: Path) -> None:
    # One batch per epoch: its loss is finite, only the step after it breaks the weights.
    report = Recorder(tmp_path)
    settings = {"lr": 1e30, "optimizer": "sgd", "alpha": 0.0, "batch_size": 64}
    with pytest.raises(NonFiniteMetricError, match=r"validation logits became .* after epoch 1 "):
        fit(context, settings, report)
    assert report.metrics == []


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_metric_fails_the_trial_before_its_report(
        context: TrialContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        value: float) -> None:
    evaluate = loop_module.evaluate
    calls: list[int] = []

    def breaks_at_epoch_2(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs["epoch"])
        metrics = evaluate(*args, **kwargs)
        return {**metrics, "val_acc": value} if kwargs["epoch"] == 2 else metrics

    monkeypatch.setattr(loop_module, "evaluate", breaks_at_epoch_2)
    report = Recorder(tmp_path)
    assert context.cfg.search.metric == "val_acc"
    with pytest.raises(NonFiniteMetricError,
                       match=rf"^search.metric val_acc became {value} after epoch 2: "):
        fit(context, {"alpha": 0.0}, report)
    assert calls == [1, 2] and [m["epoch"] for m in report.metrics] == [1]


def test_online_the_teacher_scores_its_own_clip_of_the_students_view(
        context: TrialContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    load_teacher = trial_module.load_teacher

    def recording(path: str, device: torch.device) -> torch.nn.Module:
        teacher = load_teacher(path, device)
        teacher.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
        return teacher

    monkeypatch.setattr(trial_module, "load_teacher", recording)
    fit(context, {"alpha": 0.5, "temperature": 2.0, "backbone": "tiny3d"}, Recorder(tmp_path))
    teacher, student = context.cfg.teacher.clip, context.cfg.student.clip
    assert teacher is not None and teacher.num_frames != student.num_frames
    assert seen and {shape[1:] for shape in seen} == {
        (3, teacher.num_frames, teacher.crop_size, teacher.crop_size)}
