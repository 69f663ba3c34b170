"""kdsearch: distributed hyperparameter search for knowledge distillation of video models."""

from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.losses import KDLoss, kd_loss
from kdsearch.spacefile import load_space

__version__ = "0.1.0"

__all__ = ["ConfigError", "KDLoss", "SpaceConfig", "__version__", "kd_loss", "load_space"]
