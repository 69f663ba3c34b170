"""kdsearch.data.media: the frame indices of a clip."""

from __future__ import annotations

import pytest

from kdsearch.data import clip_indices


def test_clip_indices_pad_short_videos_with_the_last_frame() -> None:
    assert clip_indices(100, 10, 4, 3) == [10, 13, 16, 19]
    assert clip_indices(5, 1, 4, 2) == [1, 3, 4, 4]
    assert clip_indices(1, 0, 3, 2) == [0, 0, 0]
    with pytest.raises(ValueError, match="video_frames=0"):
        clip_indices(0, 0, 4, 1)


@pytest.mark.parametrize(("start", "num_frames", "stride"), [(-1, 4, 1), (0, 0, 1), (0, 4, 0)])
def test_clip_indices_rejects_bad_arguments(start: int, num_frames: int, stride: int) -> None:
    with pytest.raises(ValueError, match="clip of video_frames="):
        clip_indices(10, start, num_frames, stride)
