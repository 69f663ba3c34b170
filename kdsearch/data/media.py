"""Media helpers every decoder shares: file extensions, frame-index arithmetic, resizing and
rotation arithmetic, and the gap filling of frames that do not decode. Imports neither PyAV
nor torch, so that listing a folder costs nothing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: The largest frame kdsearch decodes, in pixels (DCI 4K): a bigger video is skipped by the
#: probe before any frame of it is decoded. An 8192x8192 video of a few KB would otherwise cost
#: about 100 MB per decoded frame (some 530 MB per clip).
MAX_WIDTH, MAX_HEIGHT = 4096, 2160
MAX_PIXELS = MAX_WIDTH * MAX_HEIGHT


def too_large(width: int, height: int) -> str | None:
    """Why a frame of ``width`` x ``height`` is too large to decode, or None."""
    if width * height <= MAX_PIXELS:
        return None
    return (f"{width}x{height} is larger than the limit of {MAX_PIXELS} pixels per frame "
            f"({MAX_WIDTH}x{MAX_HEIGHT}); scale it down, e.g. ffmpeg -vf scale=-2:720")


def printable_name(name: str) -> str:
    """``name`` as text that can be printed and stored: bytes of a file name that are not
    UTF-8 (which Python keeps as surrogates) shown as ``\\xff`` escapes."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte stands for
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class DecodeError(ValueError):
    """A clip could not be decoded; the message names the file and the reason."""


def clip_indices(video_frames: int, start: int, num_frames: int, stride: int) -> list[int]:
    """Frames ``start, start + stride, ...`` clamped to ``video_frames - 1``: a video too short
    for the clip is padded by repeating its last frame."""
    if video_frames < 1 or start < 0 or num_frames < 1 or stride < 1:
        raise ValueError(f"clip of video_frames={video_frames}, start={start}, "
                         f"num_frames={num_frames}, stride={stride} is invalid: need "
                         "video_frames >= 1, start >= 0, num_frames >= 1, stride >= 1")
    return [min(start + k * stride, video_frames - 1) for k in range(num_frames)]


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side resized to ``short_side``, keeping the aspect."""
    if short_side is None or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
    """(T, H, W, C) frames turned clockwise by ``rotation`` degrees (0/90/180/270)."""
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation {rotation} is not one of 0, 90, 180, 270 (clockwise degrees)")
    if rotation == 0:
        return frames
    # A copy: torch.from_numpy refuses the negative strides a rotated view has.
    return np.ascontiguousarray(np.rot90(frames, k=-rotation // 90, axes=(1, 2)))


def fill_missing(indices: Sequence[int], good: dict[int, np.ndarray], source: str,
                 reason: str = "") -> np.ndarray:
    """Frames at ``indices`` from ``good``; a missing one repeats the last good frame before it
    (the first good one when none is before it). DecodeError naming ``source`` when ``good`` is
    empty."""
    if not good:
        raise DecodeError(f"{source}: none of frames {min(indices)}..{max(indices)} decodes"
                          + (f" ({reason})" if reason else ""))
    known = sorted(good)
    frames = []
    for index in indices:
        earlier = [k for k in known if k <= index]
        frames.append(good[earlier[-1] if earlier else known[0]])
    return np.stack(frames)
