"""One trial: distil one student configuration. No Ray here (see ``trainable.py``)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from kdsearch.cache import CachedTrainBatches, CachedValBatches, ClipCache
from kdsearch.config import SEARCHABLE, SpaceConfig, Student
from kdsearch.data.video import VideoRecord
from kdsearch.datasets import local_records, make_loaders
from kdsearch.engine import (
    Batch,
    Normalized,
    build_model,
    evaluate,
    make_optimizer,
    pick_device,
    to_channels_last,
    train_one_epoch,
)
from kdsearch.storage import copy_to_local

#: report(metrics, checkpoint_dir): called once per epoch; the directory lives until it returns.
Report = Callable[[dict[str, Any], Path], None]
CHECKPOINT_FILE = "student.pt"


@dataclasses.dataclass(frozen=True)
class TrialSettings:
    """The settings one trial trains with: the student defaults, overridden by the sample."""

    backbone: str
    alpha: float
    temperature: float
    lr: float
    weight_decay: float
    momentum: float
    batch_size: int
    optimizer: str

    @classmethod
    def resolve(cls, student: Student, sampled: Mapping[str, Any]) -> TrialSettings:
        values = {name: sampled.get(name, getattr(student, name)) for name in SEARCHABLE}
        values["batch_size"] = int(values["batch_size"])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial shares, resolved once in the driver."""

    cfg: SpaceConfig
    classes: tuple[str, ...]
    teacher_path: str
    train: tuple[VideoRecord, ...]  # the usable videos, indexed once by the driver
    val: tuple[VideoRecord, ...]
    cache: str | None = None  # the clip and teacher-output cache; None: decode and run online


def load_teacher(path: str | Path, device: torch.device) -> Normalized:
    """The saved teacher at ``path``: a file, or a URI (``s3://...``) that is copied to this
    node's disk once and read from there by every later trial on the node."""
    saved = torch.load(copy_to_local(path), map_location="cpu", weights_only=True)
    teacher = build_model(saved["model"], len(saved["classes"]), "none", "teacher")
    teacher.load_state_dict(saved["state_dict"])
    return teacher.to(device).eval()


def fit(ctx: TrialContext, sampled: Mapping[str, Any], report: Report,
        resume: Path | None = None) -> None:
    """Train one student for ``student.epochs`` epochs, reporting after each epoch."""
    cfg = ctx.cfg
    settings = TrialSettings.resolve(cfg.student, sampled)
    torch.manual_seed(cfg.search.seed)
    device = pick_device(cfg.resources.gpus_per_trial)
    speed = {"bf16": cfg.student.bf16, "channels_last": cfg.student.channels_last}
    train_epoch, val_loader = _data(ctx, settings.batch_size)
    student = build_model(settings.backbone, len(ctx.classes), cfg.student.weights, "student")
    student = to_channels_last(student.to(device), device, cfg.student.channels_last)
    # With the cache the teacher's logits come with the clips: the teacher is never loaded.
    online = ctx.cache is None and settings.alpha > 0
    teacher = load_teacher(ctx.teacher_path, device) if online else None
    optimizer = make_optimizer(student.parameters(), settings.optimizer, settings.lr,
                               settings.weight_decay, settings.momentum)
    epochs = cfg.student.epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start = 0
    if resume is not None:
        state = torch.load(resume / CHECKPOINT_FILE, map_location=device, weights_only=True)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])
    for epoch in range(start + 1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        metrics: dict[str, Any] = train_one_epoch(
            student, train_epoch(epoch), optimizer, device, teacher, settings.alpha,
            settings.temperature, **speed)
        metrics.update(evaluate(student, val_loader, device, ctx.classes, **speed))
        schedule.step()
        metrics.update({"epoch": epoch, "lr": lr, "device": str(device)})
        with tempfile.TemporaryDirectory(prefix="kdsearch-ckpt-") as tmp:
            torch.save({"epoch": epoch, "student": student.state_dict(),
                        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "settings": dataclasses.asdict(settings), "classes": list(ctx.classes)},
                       Path(tmp) / CHECKPOINT_FILE)
            report(metrics, Path(tmp))


def _data(ctx: TrialContext, batch_size: int
          ) -> tuple[Callable[[int], Iterable[Batch]], Iterable[Batch]]:
    """(epoch -> training batches, validation batches), from the cache or decoded online."""
    cfg = ctx.cfg
    if ctx.cache is not None:
        cache = ClipCache.open(ctx.cache)
        train = CachedTrainBatches(cache, batch_size, cfg.search.seed)
        return train.epoch, CachedValBatches(cache, batch_size)
    # Records of a data.root URI point into the driver's copy: this node uses its own.
    records = local_records(cfg.data, ctx.train), local_records(cfg.data, ctx.val)
    train_loader, val_loader = make_loaders(
        *records, cfg.student.clip, batch_size, seed=cfg.search.seed,
        val_clips_per_video=cfg.student.val_clips_per_video, num_workers=cfg.data.num_workers)
    return (lambda epoch: train_loader), val_loader
