"""A registry model with its own input normalisation, so that teacher and student take the same
raw clip (float in [0, 1]) whatever mean and std each was trained with."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kdsearch.models._registry import create_model, get_spec


class Normalized(nn.Module):
    """A model with its own input normalisation, so teacher and student take the same raw clips."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Iterable[float], std: Iterable[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1, 1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model((clips - self.mean) / self.std)


def build_model(name: str, num_classes: int, weights: str, role: str) -> Normalized:
    """``weights="pretrained"`` takes the model's own pretrained weights (Kinetics-400 or
    ImageNet, whichever the registry lists), so one setting fits every searched backbone."""
    spec = get_spec(name)
    if weights == "pretrained":
        weights = spec.pretrained or "none"
    model = create_model(name, num_classes, weights=weights, role=role)  # type: ignore[arg-type]
    return Normalized(model, spec.mean, spec.std)
