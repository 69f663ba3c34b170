"""One trial: distil one student configuration. No Ray here (see ``trainable.py``)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from kdsearch.config import (
    INFEASIBLE,
    SpaceConfig,
    searched_values,
    teacher_clip,
    trial_student,
)
from kdsearch.data.dataset import local_records, make_loaders
from kdsearch.data.video import VideoRecord
from kdsearch.models import build_model
from kdsearch.models.checkpoints import STUDENT_FILE, load_teacher, read_student, save_student
from kdsearch.models.cost import measure_cost
from kdsearch.train.cache import CachedTrainBatches, CachedValBatches, ClipCache
from kdsearch.train.loop import (
    Batch,
    NonFiniteMetricError,
    make_optimizer,
    pick_device,
    to_channels_last,
    to_model_input,
    train_epochs,
)
from kdsearch.train.losses import Distillation

#: report(metrics, checkpoint_dir): called once per epoch; the directory lives until it returns.
#: An infeasible student is reported once, without a checkpoint (None).
Report = Callable[[dict[str, Any], Path | None], None]
CHECKPOINT_FILE = STUDENT_FILE


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial shares, resolved once in the driver."""

    cfg: SpaceConfig
    classes: tuple[str, ...]
    teacher_path: str
    train: tuple[VideoRecord, ...]  # the usable videos, indexed once by the driver
    val: tuple[VideoRecord, ...]
    cache: str | None = None  # the clip and teacher-output cache; None: decode and run online


def fit(ctx: TrialContext, sampled: Mapping[str, Any], report: Report,
        resume: Path | None = None, *, seed: int | None = None) -> None:
    """Train one student for ``student.epochs`` epochs, reporting after each epoch.

    ``seed`` (None: ``search.seed``) sets the initial weights and the order and views of the
    training batches; the validation clips and the cache stay the same, so runs on other seeds
    (kdsearch.search.baseline) are measured on exactly the trial's validation set.
    """
    cfg = ctx.cfg
    settings = trial_student(cfg.student, sampled)
    seed = cfg.search.seed if seed is None else seed
    torch.manual_seed(seed)
    device = pick_device(cfg.resources.gpus_per_trial)
    student = build_model(settings.backbone, len(ctx.classes), cfg.student.weights, "student")
    # Its cost first: a student over a limit of search.constraints ends here, untrained.
    cost = _cost(student, settings.backbone, len(ctx.classes), cfg, device)
    if (exceeded := cfg.search.constraints.violations(cost)):
        report({**cost, "epoch": 0, cfg.search.metric: math.nan, "device": str(device),
                INFEASIBLE: "; ".join(exceeded)}, None)
        return
    train_epoch, val_loader = _data(ctx, settings.batch_size, seed, settings.alpha > 0)
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
        state = read_student(resume, device)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = int(state["epoch"])

    def done(epoch: int, lr: float, metrics: dict[str, Any]) -> None:
        metrics.update({"epoch": epoch, "lr": lr, "device": str(device), **cost})
        _check_metric(metrics, cfg.search.metric, epoch)  # before the report: never ranked
        with tempfile.TemporaryDirectory(prefix="kdsearch-ckpt-") as tmp:
            save_student(Path(tmp), epoch=epoch, student=student, optimizer=optimizer,
                         schedule=schedule, settings=searched_values(settings),
                         classes=ctx.classes)
            report(metrics, Path(tmp))

    train_epochs(student, optimizer, schedule, train_batches=train_epoch,
                 val_batches=val_loader, device=device, classes=ctx.classes, epochs=epochs,
                 start=start, teacher=teacher,
                 distillation=Distillation.from_student(settings), bf16=cfg.student.bf16,
                 channels_last=cfg.student.channels_last, on_epoch=done)


#: (backbone, classes, clip, device, threads) -> its cost, measured once per process: trials
#: of a search reuse their Ray actors, so a student measured once keeps its figures.
_COSTS: dict[tuple[Any, ...], dict[str, float]] = {}


def _cost(student: torch.nn.Module, backbone: str, classes: int, cfg: SpaceConfig,
          device: torch.device) -> dict[str, float]:
    clip = (cfg.student.clip.num_frames, cfg.student.clip.crop_size)
    key = (backbone, classes, clip, str(device), torch.get_num_threads())
    if key not in _COSTS:
        _COSTS[key] = measure_cost(student, clip, device).metrics()
    return dict(_COSTS[key])


def validation_clips(ctx: TrialContext, limit: int = 1024) -> torch.Tensor:
    """Up to ``limit`` validation clips as the trials see them (float in [0, 1], on the CPU):
    from the cache, or decoded. What an exported student is checked on."""
    _, val = _data(ctx, batch_size=min(limit, 16), seed=ctx.cfg.search.seed, with_teacher=False)
    found: list[torch.Tensor] = []
    for batch in val:
        found.append(to_model_input(batch[0], torch.device("cpu")))
        if sum(len(c) for c in found) >= limit:
            break
    return torch.cat(found)[:limit]


def _check_metric(metrics: Mapping[str, Any], metric: str, epoch: int) -> None:
    """A NaN or infinite ``metric`` fails the trial: ranked by it, the trial would win or lose
    by chance, and a scheduler or sampler would compare against noise."""
    value = metrics.get(metric)
    if isinstance(value, int | float) and not math.isfinite(value):
        raise NonFiniteMetricError(f"search.metric {metric} became {value} after epoch {epoch}: "
                                   "a trial is ranked by it, so it must be finite")


def _data(ctx: TrialContext, batch_size: int, seed: int, with_teacher: bool
          ) -> tuple[Callable[[int], Iterable[Batch]], Iterable[Batch]]:
    """(epoch -> training batches, validation batches), from the cache or decoded online;
    ``with_teacher``: online batches carry the teacher's own clip of each view."""
    cfg = ctx.cfg
    if ctx.cache is not None:
        cache = ClipCache.open(ctx.cache)
        train = CachedTrainBatches(cache, batch_size, seed)
        return train.epoch, CachedValBatches(cache, batch_size)
    # Records of a data.root URI point into the driver's copy: this node uses its own.
    records = local_records(cfg.data, ctx.train), local_records(cfg.data, ctx.val)
    train_loader, val_loader = make_loaders(
        *records, cfg.student.clip, batch_size, seed=seed,
        val_clips_per_video=cfg.student.val_clips_per_video, num_workers=cfg.data.num_workers,
        teacher=teacher_clip(cfg) if with_teacher else None)
    return (lambda epoch: train_loader), val_loader
