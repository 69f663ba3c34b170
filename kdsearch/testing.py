"""Helpers for kdsearch's tests: a tiny space file that trains in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_SPACE: dict[str, Any] = {
    "experiment": {"name": "tiny"},
    "data": {"format": "synthetic", "root": "data/tiny",
             "synthetic": {"train_per_class": 4, "val_per_class": 2, "num_frames": 12,
                           "size": 32, "seed": 0}},
    "teacher": {"model": "small3d", "epochs": 1, "batch_size": 8},
    "student": {"backbone": "tiny3d", "epochs": 2, "batch_size": 8,
                "clip": {"num_frames": 4, "stride": 2, "crop_size": 32}},
    "search": {"space": {"alpha": {"type": "uniform", "low": 0.1, "high": 0.9},
                         "temperature": {"type": "loguniform", "low": 1.0, "high": 8.0},
                         "backbone": {"type": "choice", "values": ["tiny3d", "tiny_r2plus1d"]}},
               "num_samples": 3, "max_concurrent": 2, "seed": 0,
               "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


def write_tiny_space(folder: Path, **sections: Any) -> Path:
    """Write the tiny space file into ``folder``, replacing whole top-level sections."""
    raw = {**TINY_SPACE, **sections}
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
