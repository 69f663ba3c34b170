"""Helpers of the model tests: random clips and state-dict comparisons."""

from __future__ import annotations

import torch

from kdsearch.models import get_spec

TINY = ["tiny3d", "tiny3d_wide", "tiny_r2plus1d", "small3d"]
NUM_CLASSES = 4


def random_clip(name: str, frames: int = 8, size: int = 64, batch: int = 1) -> torch.Tensor:
    if name == "mvit_v2_s":
        frames, size = get_spec(name).clip
    return torch.randn(batch, 3, frames, size, size)


def assert_same_tensors(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], skip: str
) -> None:
    keys = [k for k in want if not k.startswith(skip)]
    assert keys
    for key in keys:
        assert torch.equal(got[key], want[key]), key
