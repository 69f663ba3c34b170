"""Helpers of the data tests: decoding test media by hand, grey ramps and small data sets.

Test videos come from kdsearch.testing.media: every frame shows its own number, so a test can
tell exactly which frames a reader returned, and that they are upright.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from kdsearch.config import Data
from kdsearch.data import write_video
from kdsearch.testing.media import frame_number_of, write_frame_folder, write_test_video

FRAMES = 40
# (suffix, codec): every container the readers must seek in exactly. The mpeg4 ones have
# B-frames coded before their keyframe; AVI stores no presentation timestamps; h264 in AVI
# has timestamps that cannot place frames at all (read by decoding from the start).
CODECS = [(".mp4", "libx264"), (".mkv", "libx264"), (".webm", "libvpx-vp9"),
          (".webm", "libvpx"), (".avi", "mpeg4"), (".mov", "mpeg4"), (".mov", "mjpeg"),
          (".mkv", "mpeg4"), (".avi", "libx264")]
# Decoded grey levels may be off by a little: RGB -> limited-range YUV -> RGB rounds.
CODEC_TOLERANCE = 3


def codec_id(codec: tuple[str, str]) -> str:
    return f"{codec[0][1:]}-{codec[1]}"


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of ``path``, decoded from the start with PyAV alone: the truth."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def numbers(frames: np.ndarray, num_frames: int = FRAMES) -> list[int]:
    return [frame_number_of(frame, num_frames) for frame in frames]


def write_ramp(path: Path, num_frames: int, size: int = 32, codec: str | None = None) -> Path:
    """A grey video whose frame i has the value 8 * i everywhere."""
    levels = np.arange(num_frames, dtype=np.uint8) * 8
    write_video(path, np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3))
                .copy(), fps=8, codec=codec)
    return path


def levels(clip: np.ndarray) -> np.ndarray:
    return clip.reshape(len(clip), -1).mean(axis=1)


def video_set(root: Path, per_class: int = 3, splits: tuple[str, ...] = ("train", "val"),
              classes: tuple[str, ...] = ("kick", "run")) -> Path:
    for split in splits:
        for name in classes:
            for i in range(per_class):
                write_test_video(root / split / name / f"{name}{i}.mp4", num_frames=12)
    return root


def frame_set(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("kick", "run")
              ) -> Path:
    for split in ("train", "val"):
        for name in classes:
            for i in range(per_class):
                write_frame_folder(root / split / name / f"{name}_{i:03d}", num_frames=10)
    return root


def data(root: Path, **kwargs: object) -> Data:
    return Data.model_validate({"format": "video_folder", "root": str(root), **kwargs})
