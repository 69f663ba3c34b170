"""Frame folders: a video stored as one image per frame (as ``ffmpeg -i v.mp4 img_%05d.jpg``
writes), read frame by frame with Pillow."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from kdsearch.data.media import FRAME_EXTENSIONS, DecodeError, fill_missing, scaled_size

_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
# What Pillow raises for a file that is not an image or is cut short (SyntaxError comes from
# some plugins' header parsers).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def list_frames(folder: Path) -> list[Path]:
    """Image files of a frame folder ordered by the last number in their name, then by name
    (img_2 before img_10); hidden files are ignored, names without a number come last."""
    folder = Path(folder)
    names = [entry.name for entry in os.scandir(folder)
             if not entry.name.startswith(".") and entry.is_file()
             and os.path.splitext(entry.name)[1].lower() in FRAME_EXTENSIONS]
    return [folder / name for name in sorted(names, key=_frame_order)]


def _frame_order(name: str) -> tuple[int, int, str]:
    match = _LAST_NUMBER.search(os.path.splitext(name)[0])
    return (0, int(match.group(1)), name) if match else (1, 0, name)


@functools.lru_cache(maxsize=4096)
def _cached_listing(folder: str, modified_ns: int) -> tuple[Path, ...]:
    # Keyed by the folder's mtime, which adding, removing or renaming a frame changes: a
    # training run reads each folder many times, and listing and sorting it each time costs
    # about as much as decoding a small frame.
    return tuple(list_frames(Path(folder)))


def read_frame_files(folder: Path, indices: Sequence[int], *,
                     short_side: int | None = None) -> np.ndarray:
    """Frames ``indices`` of a frame folder as uint8 RGB (len(indices), H, W, 3).

    Opens only the files needed; a JPEG is decoded at a reduced scale (Image.draft) when
    ``short_side`` is well below its size. Frames are resized so that the short side is
    ``short_side`` (all to the first frame's size without it). An index past the last frame
    reads the last frame; an unreadable frame repeats the last good one before it. DecodeError
    when none of them reads, or all lie past the last frame.
    """
    if not indices or min(indices) < 0:
        raise ValueError(f"frame indices {list(indices)} are invalid: need at least one, all >= 0")
    folder = Path(folder)
    try:
        files = _cached_listing(str(folder), os.stat(folder).st_mtime_ns)
    except OSError as error:
        raise DecodeError(f"frame folder {folder} cannot be listed: {error}") from error
    if not files:
        raise DecodeError(f"frame folder {folder} holds no images "
                          f"({', '.join(FRAME_EXTENSIONS)})")
    if min(indices) >= len(files):
        raise DecodeError(f"frame folder {folder} holds {len(files)} frames, but frames "
                          f"{min(indices)}..{max(indices)} are needed")
    clamped = [min(index, len(files) - 1) for index in indices]
    good: dict[int, np.ndarray] = {}
    errors: list[str] = []
    size: tuple[int, int] | None = None
    for index in sorted(set(clamped)):
        try:
            good[index], size = _read_image(files[index], short_side, size)
        except _IMAGE_ERRORS as error:
            errors.append(f"{files[index].name}: {error}")
    return fill_missing(clamped, good, f"frame folder {folder}", "; ".join(errors[:3]))


def _read_image(path: Path, short_side: int | None, size: tuple[int, int] | None
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as RGB at ``size`` (width, height), or at its own size scaled to
    ``short_side`` when ``size`` is None; returns the size used."""
    with Image.open(path) as image:
        if size is None:
            size = scaled_size(image.width, image.height, short_side)
        if image.format == "JPEG" and size != image.size:
            # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the size asked for.
            image.draft("RGB", size)
        rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(rgb), size
