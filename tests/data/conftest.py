"""Fixtures of the data tests: a folder of test media, the coded test videos, a synthetic set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdsearch.data import generate_synthetic
from kdsearch.testing.media import write_test_video

from .helpers import CODECS, FRAMES, codec_id, decode_all


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module", params=CODECS, ids=codec_id)
def coded(request: pytest.FixtureRequest, media: Path) -> tuple[Path, list[np.ndarray]]:
    """A 40-frame video with a keyframe every 6 frames, and its frames decoded from the start."""
    suffix, codec = request.param
    path = write_test_video(media / f"seek-{codec}{suffix}", num_frames=FRAMES, codec=codec,
                            gop=6)
    return path, decode_all(path)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "set", train_per_class=12,
                              val_per_class=2, num_frames=32, size=64)
