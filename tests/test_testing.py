"""kdsearch.testing.media: test videos whose frames show their own number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data.helpers import CODECS, FRAMES, codec_id, decode_all, numbers

from kdsearch.testing import media as testmedia
from kdsearch.testing.media import frame_number_of, write_test_video


@pytest.mark.parametrize("codec", CODECS, ids=codec_id)
def test_test_videos_show_their_frame_numbers(tmp_path: Path, codec: tuple[str, str]) -> None:
    suffix, name = codec
    path = write_test_video(tmp_path / f"seek-{name}{suffix}", num_frames=FRAMES, codec=name,
                            gop=6)
    truth = decode_all(path)
    assert numbers(np.stack(truth)) == list(range(FRAMES))


def test_frame_number_of_refuses_a_turned_or_mirrored_frame() -> None:
    frame = testmedia.frame_image(37, 64, 48)
    assert frame_number_of(frame, 40) == 37
    for turned in (np.rot90(frame), frame[:, ::-1], frame[::-1]):
        with pytest.raises(ValueError, match="marker is at the"):
            frame_number_of(turned, 40)
    with pytest.raises(ValueError, match="number 37 is out of range for 30 frames"):
        frame_number_of(frame, 30)
