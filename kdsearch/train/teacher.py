"""The teacher stage: fine-tune the teacher on the user's classes once per search.

The teacher trains and is evaluated on its own clip (``teacher.clip``: by default the model's
native input from the registry), not the student's. A fine-tuned teacher is saved under
``<storage>/teachers/<key>/`` where the key covers the teacher settings, its clip and the
training data (paths, sizes, modification times, content hashes);
a later search with the same key reuses it instead of training again, after checking it
against the size and checksums its ``meta.json`` records. ``storage`` may be a
URI (``s3://...``): the teacher is then uploaded there, and each node that loads it copies
it to local disk once (``kdsearch.models.checkpoints.load_teacher``).

One process per key trains (a file lock; for a URI, a lock on this node's disk). The
fine-tuning saves each epoch to ``partial/`` beside the teacher (on this node's disk for a
URI) and a later call with the same key resumes after the last saved epoch; the partial
state is removed once the teacher is committed. See docs/artifacts.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from kdsearch import storage
from kdsearch.config import ConfigError, SpaceConfig, Teacher, teacher_clip
from kdsearch.data.dataset import DatasetSplits, load_dataset, make_loaders, prepare_data
from kdsearch.models import WeightsError, build_model, get_head
from kdsearch.models.checkpoints import (
    PARTIAL_FILE,
    TEACHER_FILE,
    TEACHER_META,
    read_partial,
    save_partial,
    save_teacher,
)
from kdsearch.storage import is_uri
from kdsearch.train.loop import (
    evaluate,
    make_optimizer,
    pick_device,
    to_channels_last,
    train_epochs,
)

META_FILE = TEACHER_META
PARTIAL_DIR = "partial"
Log = Callable[[str], None]
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


def prepare_teacher(cfg: SpaceConfig, data: DatasetSplits, log: Log = print
                    ) -> TeacherResult:
    """Reuse the saved teacher for these settings and data, or fine-tune and save one (one
    process per key at a time; the others wait on the lock, then reuse it)."""
    source = _source(cfg, log)
    key = teacher_key(cfg, data, source)
    with FileLock(str(storage.lock_path(cfg.storage, "teachers", key))):
        since = time.time()
        if is_uri(cfg.storage):
            return _prepare_remote(cfg, data, source, key, log, since)
        return _prepare_local(cfg, data, source, key, log, since)


def _prepare_local(cfg: SpaceConfig, data: DatasetSplits, source: DatasetSplits | None,
                   key: str, log: Log, since: float) -> TeacherResult:
    folder = Path(cfg.storage) / "teachers" / key
    teacher, meta_path = folder / TEACHER_FILE, folder / META_FILE
    for name in (TEACHER_FILE, META_FILE):
        storage.remove_stale(folder, name, since)
    storage.remove_stale(folder / PARTIAL_DIR, PARTIAL_FILE, since)
    meta = storage.read_meta(meta_path)
    problem = _check(teacher, meta)
    if problem is None:
        assert meta is not None
        log(f"teacher {cfg.teacher.model}: reusing {folder} "
            f"(val_acc {meta['metrics']['val_acc']:.3f})")
        return TeacherResult(teacher, meta["metrics"], True, key, 0.0)
    if meta_path.exists() or teacher.exists():
        log(f"teacher {cfg.teacher.model}: {folder} is damaged ({problem}): training it again")
        meta_path.unlink(missing_ok=True)  # first: without it the teacher counts as absent
        teacher.unlink(missing_ok=True)
    start = time.monotonic()
    partial = folder / PARTIAL_DIR
    metrics, state = _finetune(cfg, data, source, log, partial)
    seconds = time.monotonic() - start
    folder.mkdir(parents=True, exist_ok=True)
    record = save_teacher(teacher, cfg.teacher.model, data.classes, state)
    storage.write_meta(meta_path, _meta(cfg, data, metrics, seconds, record))  # last
    shutil.rmtree(partial, ignore_errors=True)
    return TeacherResult(teacher, metrics, False, key, seconds)


def _check(teacher: Path, meta: dict[str, Any] | None) -> str | None:
    """What is wrong with a saved teacher (None when whole): the meta file readable, the
    teacher file of the size and checksums it records (hashed whole: once per search)."""
    if meta is None:
        return f"{META_FILE} is missing or unreadable"
    if not isinstance(meta.get("metrics"), dict) or "val_acc" not in meta["metrics"]:
        return f"{META_FILE} has no metrics"
    return storage.check_files(teacher.parent, meta.get("files"), (TEACHER_FILE,), full=True)


def _meta(cfg: SpaceConfig, data: DatasetSplits, metrics: dict[str, Any], seconds: float,
          record: storage.FileRecord) -> dict[str, Any]:
    return {"model": cfg.teacher.model, "metrics": metrics, "seconds": seconds,
            "teacher": cfg.redacted()["teacher"], "classes": list(data.classes),
            "files": {TEACHER_FILE: record}}


def _prepare_remote(cfg: SpaceConfig, data: DatasetSplits, source: DatasetSplits | None,
                    key: str, log: Log, since: float) -> TeacherResult:
    """:func:`prepare_teacher` for a storage URI: the teacher file is uploaded first and the
    metadata file last, so a present ``meta.json`` means a complete teacher; a reused one is
    checked on this node's copy. The partial state lives on this node's disk."""
    folder = storage.join(cfg.storage, "teachers", key)
    teacher_uri, meta_uri = storage.join(folder, TEACHER_FILE), storage.join(folder, META_FILE)
    if storage.exists(meta_uri):
        problem = _check_remote(teacher_uri, meta_uri)
        if problem is None:
            meta = json.loads(storage.read_bytes(meta_uri))
            log(f"teacher {cfg.teacher.model}: reusing {storage.redact(folder)} "
                f"(val_acc {meta['metrics']['val_acc']:.3f})")
            return TeacherResult(teacher_uri, meta["metrics"], True, key, 0.0)
        log(f"teacher {cfg.teacher.model}: {storage.redact(folder)} is damaged ({problem}): "
            "training it again")
        filesystem, path = storage.filesystem(meta_uri)
        filesystem.delete_file(path)
    partial = storage.local_dir(cfg.storage, "teachers", key, PARTIAL_DIR)
    storage.remove_stale(partial, PARTIAL_FILE, since)
    start = time.monotonic()
    metrics, state = _finetune(cfg, data, source, log, partial)
    seconds = time.monotonic() - start
    with tempfile.TemporaryDirectory(prefix="kdsearch-teacher-") as tmp:
        local = Path(tmp) / TEACHER_FILE
        record = save_teacher(local, cfg.teacher.model, data.classes, state)
        storage.upload(local, teacher_uri)
    storage.write_bytes(meta_uri, json.dumps(_meta(cfg, data, metrics, seconds, record),
                                             indent=2).encode())
    shutil.rmtree(partial, ignore_errors=True)
    log(f"teacher {cfg.teacher.model}: saved to {storage.redact(folder)}")
    return TeacherResult(teacher_uri, metrics, False, key, seconds)


def _check_remote(teacher_uri: str, meta_uri: str) -> str | None:
    try:
        meta = json.loads(storage.read_bytes(meta_uri))
    except (OSError, ValueError):
        return f"{META_FILE} is unreadable"
    try:
        size, _ = storage.stat(teacher_uri)
    except FileNotFoundError:
        return f"{TEACHER_FILE} is missing"
    record = (meta.get("files") or {}).get(TEACHER_FILE) if isinstance(meta, dict) else None
    if not isinstance(record, dict) or record.get("size") != size:
        return f"{TEACHER_FILE} is {size} bytes, not what {META_FILE} records"
    return _check(storage.copy_to_local(teacher_uri), meta)


def _finetune(cfg: SpaceConfig, data: DatasetSplits, source: DatasetSplits | None, log: Log,
              partial: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The teacher fine-tuned on ``data``: from ``teacher.weights``, or from the backbone it
    got on the ``source`` set first (``teacher.pretrain``); each epoch saved to ``partial``
    and resumed from there."""
    if source is None:
        return _train(cfg, cfg.teacher, data, log, partial=partial)
    return _train(cfg, cfg.teacher.model_copy(update={"weights": _pretrained(cfg, source, log)}),
                  data, log, partial=partial)


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
    # Committed whole: a half-written backbone is never reused.
    storage.write_file(path, lambda f: torch.save(backbone, f), digest=False)
    return str(path)


def _train(cfg: SpaceConfig, t: Teacher, data: DatasetSplits, log: Log, what: str = "epoch",
           partial: Path | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train ``t`` on ``data``; with ``partial``, save each epoch there and start after the
    epoch saved there, if any (model, optimizer, schedule, RNG states, metrics so far)."""
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
    history: list[dict[str, Any]] = []
    start = _resume(partial, t, model, optimizer, schedule, train_loader.generator, history,
                    log)
    clock = [time.monotonic()]

    def done(epoch: int, lr: float, metrics: dict[str, Any]) -> None:
        log(f"teacher {t.model} {what} {epoch}/{t.epochs}: train_loss "
            f"{metrics['train_loss']:.3f} val_acc {metrics['val_acc']:.3f} "
            f"({time.monotonic() - clock[0]:.0f}s)")
        history.append(metrics)
        if partial is not None:
            save_partial(partial, {
                "epoch": epoch, "epochs": t.epochs, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": torch.get_rng_state(), "loader_rng": train_loader.generator.get_state(),
                "history": history})
        clock[0] = time.monotonic()

    metrics = train_epochs(model, optimizer, schedule, train_batches=lambda epoch: train_loader,
                           val_batches=val_loader, device=device, classes=data.classes,
                           epochs=t.epochs, start=start, on_epoch=done, bf16=cfg.student.bf16,
                           channels_last=cfg.student.channels_last)
    if not metrics and history:  # resumed after the last epoch: its metrics were saved
        metrics = history[-1]
    if not metrics:
        metrics = evaluate(model, val_loader, device, data.classes, **speed)
    return metrics, {k: v.cpu() for k, v in model.state_dict().items()}


def _resume(partial: Path | None, t: Teacher, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, schedule: Any, generator: torch.Generator | None,
            history: list[dict[str, Any]], log: Log) -> int:
    """Load the state saved in ``partial`` into the training objects; the epoch to start
    after (0 when there is nothing to resume)."""
    saved = read_partial(partial) if partial is not None else None
    if saved is None or saved.get("epochs") != t.epochs or not 0 < saved["epoch"] <= t.epochs:
        return 0
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    torch.set_rng_state(saved["rng"])
    if generator is not None:
        generator.set_state(saved["loader_rng"])
    history.extend(saved["history"])
    log(f"teacher {t.model}: resuming after epoch {saved['epoch']}/{t.epochs} ({partial})")
    return int(saved["epoch"])
