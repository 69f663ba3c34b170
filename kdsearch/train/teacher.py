"""The teacher stage: fine-tune the teacher on the user's classes once per search.

The teacher trains and is evaluated on its own clip (``teacher.clip``: by default the model's
native input from the registry), not the student's. A fine-tuned teacher is saved under
``<storage>/teachers/<key>/`` where the key covers the teacher settings, its clip and the
training data (paths, sizes, modification times);
a later search with the same key reuses it instead of training again. ``storage`` may be a
URI (``s3://...``): the teacher is then uploaded there, and each node that loads it copies
it to local disk once (``kdsearch.models.checkpoints.load_teacher``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdsearch import storage
from kdsearch.config import ConfigError, SpaceConfig, Teacher, teacher_clip
from kdsearch.data.dataset import DatasetSplits, load_dataset, make_loaders, prepare_data
from kdsearch.models import WeightsError, build_model, get_head
from kdsearch.models.checkpoints import TEACHER_FILE, save_teacher
from kdsearch.storage import is_uri
from kdsearch.train.loop import (
    evaluate,
    make_optimizer,
    pick_device,
    to_channels_last,
    train_epochs,
)

META_FILE = "meta.json"
PRETRAINED_FILE = "backbone.pt"


@dataclasses.dataclass(frozen=True)
class TeacherResult:
    path: Path | str  # the teacher file; a URI (str) when storage is one (kdsearch.storage)
    metrics: dict[str, Any]
    reused: bool
    key: str
    seconds: float


def teacher_key(cfg: SpaceConfig, data: DatasetSplits, source: DatasetSplits | None = None
                ) -> str:
    """``source``: the set of ``teacher.pretrain`` (its content is part of the key)."""
    # The cache settings decide what is done with the teacher, not the teacher itself.
    teacher = cfg.teacher.model_dump(exclude={"cache", "cache_views", "cache_dir", "clip"})
    payload = {"teacher": teacher, "clip": teacher_clip(cfg).model_dump(),
               "source": source.fingerprint if source else None,
               "classes": list(data.classes), "data": data.fingerprint,
               "seed": cfg.search.seed, "val_clips": cfg.student.val_clips_per_video}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare_teacher(cfg: SpaceConfig, data: DatasetSplits, log: Callable[[str], None] = print
                    ) -> TeacherResult:
    """Reuse the saved teacher for these settings and data, or fine-tune and save one."""
    source = _source(cfg, log)
    key = teacher_key(cfg, data, source)
    if is_uri(cfg.storage):
        return _prepare_remote(cfg, data, source, key, log)
    folder = Path(cfg.storage) / "teachers" / key
    if (folder / META_FILE).is_file() and (folder / TEACHER_FILE).is_file():
        meta = json.loads((folder / META_FILE).read_text())
        log(f"teacher {cfg.teacher.model}: reusing {folder} "
            f"(val_acc {meta['metrics']['val_acc']:.3f})")
        return TeacherResult(folder / TEACHER_FILE, meta["metrics"], True, key, 0.0)
    start = time.monotonic()
    metrics, state = _finetune(cfg, data, source, log)
    seconds = time.monotonic() - start
    folder.mkdir(parents=True, exist_ok=True)
    # Written atomically: a half-written teacher is never reused.
    save_teacher(folder / TEACHER_FILE, cfg.teacher.model, data.classes, state)
    meta = {"model": cfg.teacher.model, "metrics": metrics, "seconds": seconds,
            "teacher": cfg.teacher.model_dump(), "classes": list(data.classes)}
    (folder / f".{META_FILE}.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(folder / f".{META_FILE}.tmp", folder / META_FILE)
    return TeacherResult(folder / TEACHER_FILE, metrics, False, key, seconds)


def _prepare_remote(cfg: SpaceConfig, data: DatasetSplits, source: DatasetSplits | None,
                    key: str, log: Callable[[str], None]) -> TeacherResult:
    """:func:`prepare_teacher` for a storage URI: the teacher file is uploaded first and the
    metadata file last, so a present ``meta.json`` means a complete teacher."""
    folder = storage.join(cfg.storage, "teachers", key)
    teacher_uri, meta_uri = storage.join(folder, TEACHER_FILE), storage.join(folder, META_FILE)
    if storage.exists(meta_uri) and storage.exists(teacher_uri):
        meta = json.loads(storage.read_bytes(meta_uri))
        log(f"teacher {cfg.teacher.model}: reusing {storage.redact(folder)} "
            f"(val_acc {meta['metrics']['val_acc']:.3f})")
        return TeacherResult(teacher_uri, meta["metrics"], True, key, 0.0)
    start = time.monotonic()
    metrics, state = _finetune(cfg, data, source, log)
    seconds = time.monotonic() - start
    with tempfile.TemporaryDirectory(prefix="kdsearch-teacher-") as tmp:
        local = Path(tmp) / TEACHER_FILE
        save_teacher(local, cfg.teacher.model, data.classes, state)
        storage.upload(local, teacher_uri)
    meta = {"model": cfg.teacher.model, "metrics": metrics, "seconds": seconds,
            "teacher": cfg.teacher.model_dump(), "classes": list(data.classes)}
    storage.write_bytes(meta_uri, json.dumps(meta, indent=2).encode())
    log(f"teacher {cfg.teacher.model}: saved to {storage.redact(folder)}")
    return TeacherResult(teacher_uri, metrics, False, key, seconds)


def _finetune(cfg: SpaceConfig, data: DatasetSplits, source: DatasetSplits | None,
              log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The teacher fine-tuned on ``data``: from ``teacher.weights``, or from the backbone it
    got on the ``source`` set first (``teacher.pretrain``)."""
    if source is None:
        return _train(cfg, cfg.teacher, data, log)
    return _train(cfg, cfg.teacher.model_copy(update={"weights": _pretrained(cfg, source, log)}),
                  data, log)


def _source(cfg: SpaceConfig, log: Callable[[str], None]) -> DatasetSplits | None:
    """The source set of ``teacher.pretrain`` (generated or indexed on first use)."""
    pretrain = cfg.teacher.pretrain
    if pretrain is None:
        return None
    prepare_data(pretrain.data, log=log)
    return load_dataset(pretrain.data, teacher_clip(cfg), storage.local_dir(cfg.storage,
                        "indexes"), log=lambda line: log(f"pretrain {line}"))


def _pretrained(cfg: SpaceConfig, source: DatasetSplits, log: Callable[[str], None]) -> str:
    """The teacher's backbone trained on the source set, once per settings and source data:
    a state-dict file under ``<storage>/teachers/pretrained-<key>/`` (on this node's disk
    for a storage URI; only the teacher stage reads it)."""
    pretrain = cfg.teacher.pretrain
    assert pretrain is not None
    payload = {"model": cfg.teacher.model, "weights": cfg.teacher.weights,
               "pretrain": pretrain.model_dump(), "clip": teacher_clip(cfg).model_dump(),
               "data": source.fingerprint, "seed": cfg.search.seed,
               "batch_size": cfg.teacher.batch_size, "weight_decay": cfg.teacher.weight_decay}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    path = storage.local_dir(cfg.storage, "teachers", f"pretrained-{key}") / PRETRAINED_FILE
    if path.is_file():
        log(f"teacher {cfg.teacher.model}: reusing the backbone pretrained on "
            f"{len(source.train)} source videos ({path})")
        return str(path)
    log(f"teacher {cfg.teacher.model}: pretraining on {len(source.train)} videos of "
        f"{len(source.classes)} classes ({storage.redact(pretrain.data.root)})")
    stage = cfg.teacher.model_copy(update={"epochs": pretrain.epochs, "lr": pretrain.lr,
                                           "finetune": "full"})
    _, state = _train(cfg, stage, source, log, what="pretraining")
    # The inner model's weights (no normalising wrapper): build_model loads them as a
    # backbone checkpoint and gives the model a new head for the target classes.
    backbone = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(backbone, tmp)
    os.replace(tmp, path)  # a half-written backbone is never reused
    return str(path)


def _train(cfg: SpaceConfig, t: Teacher, data: DatasetSplits, log: Callable[[str], None],
           what: str = "epoch") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    torch.manual_seed(cfg.search.seed)
    torch.set_num_threads(cfg.resources.teacher_cpus)
    device = pick_device(cfg.resources.gpus_per_trial)
    speed = {"bf16": cfg.student.bf16, "channels_last": cfg.student.channels_last}
    try:
        model = build_model(t.model, len(data.classes), t.weights, "teacher").to(device)
        to_channels_last(model, device, cfg.student.channels_last)
    except WeightsError as err:  # a file that exists but does not fit: the user's input
        raise ConfigError([f"teacher.weights: {err}"]) from None
    if t.finetune == "head":
        model.requires_grad_(False)
        get_head(model.model).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, "adamw", t.lr, t.weight_decay, 0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(t.epochs, 1))
    train_loader, val_loader = make_loaders(
        data.train, data.val, teacher_clip(cfg), t.batch_size, seed=cfg.search.seed,
        val_clips_per_video=cfg.student.val_clips_per_video, num_workers=cfg.data.num_workers)
    clock = [time.monotonic()]

    def done(epoch: int, lr: float, metrics: dict[str, Any]) -> None:
        log(f"teacher {t.model} {what} {epoch}/{t.epochs}: train_loss "
            f"{metrics['train_loss']:.3f} val_acc {metrics['val_acc']:.3f} "
            f"({time.monotonic() - clock[0]:.0f}s)")
        clock[0] = time.monotonic()

    metrics = train_epochs(model, optimizer, schedule, train_batches=lambda epoch: train_loader,
                           val_batches=val_loader, device=device, classes=data.classes,
                           epochs=t.epochs, on_epoch=done, bf16=cfg.student.bf16,
                           channels_last=cfg.student.channels_last)
    if not metrics:
        metrics = evaluate(model, val_loader, device, data.classes, **speed)
    return metrics, {k: v.cpu() for k, v in model.state_dict().items()}
