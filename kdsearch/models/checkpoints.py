"""The one place that writes and reads kdsearch's own checkpoints.

- A fine-tuned teacher, ``teacher.pt``: ``{"model": registry name, "classes": [...],
  "state_dict": ...}``.
- A trial's student, ``student.pt``: ``{"epoch", "student" (state dict), "optimizer",
  "schedule", "settings" (the trial's searchable settings, ``backbone`` among them),
  "classes"}``.

- A released student, ``model.pt`` (what the Model Registry holds): ``{"format": 1, "model":
  registry name, "classes": [...], "clip": {"num_frames", "stride", "crop_size"},
  "state_dict": ...}``.
- An unfinished teacher's last epoch, ``partial/last.pt``: ``{"epoch", "epochs", "model",
  "optimizer", "schedule", "rng", "loader_rng", "history" (each epoch's metrics)}``, to resume
  the fine-tuning from (kdsearch.train.teacher).

All are plain tensors and containers, read with ``weights_only=True``: loading one never runs
code from the file. Writes are committed by :func:`kdsearch.storage.write_file` (a unique
temporary name, fsync, rename, fsync of the folder), so a reader never sees half a file, even
after a crash; a teacher's size and checksums go into the ``meta.json`` beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdsearch import storage
from kdsearch.models.normalized import Normalized, build_model
from kdsearch.storage import copy_to_local

TEACHER_FILE = "teacher.pt"
TEACHER_META = "meta.json"
STUDENT_FILE = "student.pt"
PARTIAL_FILE = "last.pt"
RELEASE_FILE = "model.pt"
RELEASE_FORMAT = 1


def _save(obj: Mapping[str, Any], path: Path, *, digest: bool = False) -> storage.FileRecord:
    return storage.write_file(Path(path), lambda f: torch.save(dict(obj), f), digest=digest)


def save_teacher(path: Path, model: str, classes: Sequence[str],
                 state_dict: Mapping[str, torch.Tensor]) -> storage.FileRecord:
    """Write a fine-tuned teacher; returns its record (size, checksums) for its meta file."""
    return _save({"model": model, "classes": list(classes), "state_dict": dict(state_dict)},
                 path, digest=True)


def load_teacher(path: str | Path, device: torch.device) -> Normalized:
    """The saved teacher at ``path``, in eval mode on ``device``: a file, or a URI
    (``s3://...``) that is copied to this node's disk once and read from there by every later
    trial on the node.

    A local teacher with a ``meta.json`` beside it is checked against its record first (size
    and SHA-256: the whole file is read anyway, and hashing it costs about 0.6 s per GiB): a
    damaged file raises :class:`kdsearch.storage.ArtifactError`."""
    local = copy_to_local(path)
    meta = None if storage.is_uri(path) else storage.read_meta(local.with_name(TEACHER_META))
    if meta is not None and "files" in meta:
        problem = storage.check_file(local, meta["files"].get(local.name), full=True)
        if problem:
            raise storage.ArtifactError(
                f"teacher {local}: {problem}; delete {local.parent} and start the search "
                "again (its teacher stage trains the teacher again)")
    saved = torch.load(local, map_location="cpu", weights_only=True)
    teacher = build_model(saved["model"], len(saved["classes"]), "none", "teacher")
    teacher.load_state_dict(saved["state_dict"])
    return teacher.to(device).eval()


def save_student(folder: Path, *, epoch: int, student: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, schedule: Any, settings: Mapping[str, Any],
                 classes: Sequence[str]) -> Path:
    """Write ``folder/student.pt``; returns its path."""
    path = Path(folder) / STUDENT_FILE
    _save({"epoch": epoch, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
           "schedule": schedule.state_dict(), "settings": dict(settings),
           "classes": list(classes)}, path)
    return path


def read_student(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The raw contents of ``folder/student.pt`` (tensors on ``device``), to resume from."""
    state: dict[str, Any] = torch.load(Path(folder) / STUDENT_FILE, map_location=device,
                                       weights_only=True)
    return state


def load_student(folder: Path, num_classes: int) -> Normalized:
    """The student of ``folder/student.pt`` as it was saved, on the CPU, in eval mode."""
    state = read_student(folder)
    student = build_model(state["settings"]["backbone"], num_classes, "none", "student")
    student.load_state_dict(state["student"])
    return student.eval()


def save_release(path: Path, *, model: str, classes: Sequence[str], clip: Mapping[str, int],
                 state_dict: Mapping[str, torch.Tensor]) -> storage.FileRecord:
    """Write a student for release (no optimizer, no schedule): the registry name that builds
    it, its classes and input clip, its weights; returns its record (size, SHA-256)."""
    return _save({"format": RELEASE_FORMAT, "model": model, "classes": list(classes),
                  "clip": dict(clip), "state_dict": dict(state_dict)}, path, digest=True)


def read_release(path: Path) -> tuple[Normalized, dict[str, Any]]:
    """The student :func:`save_release` wrote, on the CPU in eval mode, and what else the file
    says (``model``, ``classes``, ``clip``). Only tensors and plain data are read
    (``weights_only=True``); a file that is not a release raises ``ValueError``."""
    try:
        saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file or a pickle that is not plain data
        raise ValueError(f"{path}: not a kdsearch model file "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    if not isinstance(saved, dict) or saved.get("format") != RELEASE_FORMAT:
        raise ValueError(f"{path}: not a kdsearch model file (format "
                         f"{saved.get('format') if isinstance(saved, dict) else None!r}, "
                         f"expected {RELEASE_FORMAT})")
    student = build_model(saved["model"], len(saved["classes"]), "none", "student")
    student.load_state_dict(saved["state_dict"])
    info = {key: saved[key] for key in ("model", "classes", "clip")}
    return student.eval(), info


def save_partial(folder: Path, state: Mapping[str, Any]) -> None:
    """Write an unfinished teacher's last epoch to ``folder/last.pt`` (replacing the one
    before)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    _save(state, Path(folder) / PARTIAL_FILE)


def read_partial(folder: Path) -> dict[str, Any] | None:
    """The state :func:`save_partial` wrote, or None when there is none or it is unreadable
    (then the fine-tuning starts again from epoch 1)."""
    path = Path(folder) / PARTIAL_FILE
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever a damaged file makes torch raise
        return None
    return state if isinstance(state, dict) and "epoch" in state else None
