"""Helpers of the model tests: random clips, state-dict comparisons, and registry entries
whose published weights a local test server serves."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch

from kdsearch.models import ModelSpec, _registry, get_spec

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


def hashed_name(stem: str, data: bytes) -> str:
    """A torchvision-style file name carrying the first 8 hex digits of the data's SHA-256."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def served_spec(url: str, file: str, name: str = "served3d") -> ModelSpec:
    """A Kinetics-400 entry (tiny3d's architecture) whose ``file`` is fetched from ``url``."""
    base = get_spec("tiny3d")
    return ModelSpec(name=name, roles=frozenset({"student", "teacher"}), source="kdsearch",
                     clip=base.clip, mean=base.mean, std=base.std, pretrained="kinetics400",
                     weights_file=file, weights_url=url, description="served by a test")


def register_served(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    """Register ``spec`` with tiny3d's builder for this test only."""
    monkeypatch.setitem(_registry._REGISTRY, spec.name, (spec, _registry._REGISTRY["tiny3d"][1]))


def tiny3d_weights(num_classes: int = 400) -> tuple[dict[str, torch.Tensor], bytes]:
    """A tiny3d state dict with a ``num_classes`` head, and the bytes ``torch.save`` makes."""
    state = _registry._REGISTRY["tiny3d"][1](num_classes).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()
