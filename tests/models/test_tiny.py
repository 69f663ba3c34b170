"""kdsearch.models._tiny: the small CNNs of kdsearch itself train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsearch.models import (
    create_model,
)

from .helpers import NUM_CLASSES, TINY, random_clip


@pytest.mark.parametrize("name", TINY)
def test_backward_tiny_models(name: str) -> None:
    model = create_model(name, NUM_CLASSES).train()
    loss = nn.functional.cross_entropy(model(random_clip(name, batch=2)), torch.tensor([0, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

