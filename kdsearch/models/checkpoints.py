"""The one place that writes and reads kdsearch's own checkpoints.

- A fine-tuned teacher, ``teacher.pt``: ``{"model": registry name, "classes": [...],
  "state_dict": ...}``.
- A trial's student, ``student.pt``: ``{"epoch", "student" (state dict), "optimizer",
  "schedule", "settings" (the trial's searchable settings, ``backbone`` among them),
  "classes"}``.

Both are plain tensors and containers, read with ``weights_only=True``: loading one never runs
code from the file. Writes go to a unique temporary name beside the target and are renamed
into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kdsearch.models.normalized import Normalized, build_model
from kdsearch.storage import copy_to_local

TEACHER_FILE = "teacher.pt"
STUDENT_FILE = "student.pt"


def _save(obj: Mapping[str, Any], path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(dict(obj), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_teacher(path: Path, model: str, classes: Sequence[str],
                 state_dict: Mapping[str, torch.Tensor]) -> None:
    _save({"model": model, "classes": list(classes), "state_dict": dict(state_dict)}, path)


def load_teacher(path: str | Path, device: torch.device) -> Normalized:
    """The saved teacher at ``path``, in eval mode on ``device``: a file, or a URI
    (``s3://...``) that is copied to this node's disk once and read from there by every later
    trial on the node."""
    saved = torch.load(copy_to_local(path), map_location="cpu", weights_only=True)
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
