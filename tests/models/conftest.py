"""Fixtures of the model tests: two threads and a fixed seed each, an empty torch hub cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hub_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache under tmp_path; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier set_dir would win over it
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return folder
