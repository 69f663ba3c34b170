"""kdsearch: distributed hyperparameter search for knowledge distillation of video models.

Importing ``kdsearch`` loads nothing heavy: the space file's names come from
:mod:`kdsearch.config` (no torch, no Ray); the KD loss and ``load_student`` (a registered
student, read without pickle) load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdsearch.config import ConfigError, SpaceConfig, load_space

if TYPE_CHECKING:
    from kdsearch.track.model import load_student
    from kdsearch.train.losses import KDLoss, kd_loss

__version__ = "0.1.0"

__all__ = ["ConfigError", "KDLoss", "SpaceConfig", "__version__", "kd_loss", "load_space",
           "load_student"]


def __getattr__(name: str) -> Any:
    if name in ("KDLoss", "kd_loss"):
        from kdsearch.train import losses

        return getattr(losses, name)
    if name == "load_student":
        from kdsearch.track import model

        return model.load_student
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")
