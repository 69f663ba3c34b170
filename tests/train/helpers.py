"""Helpers of the training tests: the tiny space file's data, checkpoints kept per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdsearch.config import SpaceConfig
from kdsearch.data.dataset import DatasetSplits, load_dataset, prepare_data
from kdsearch.train.trial import CHECKPOINT_FILE


def dataset(cfg: SpaceConfig) -> DatasetSplits:
    prepare_data(cfg.data)
    return load_dataset(cfg.data, cfg.student.clip, Path(cfg.storage), log=lambda _: None)


class Recorder:
    """A trial's report: keeps each epoch's metrics, and its checkpoint in ``keep/epoch<n>``."""

    def __init__(self, keep: Path) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.keep = keep

    def __call__(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        self.metrics.append(metrics)
        target = self.keep / f"epoch{metrics['epoch']}"
        target.mkdir()
        (target / CHECKPOINT_FILE).write_bytes((checkpoint / CHECKPOINT_FILE).read_bytes())
