"""What a search will write before it starts: the clip cache's size, from the space file and
the videos its layout lists, against the free space where it will be built.

The cache holds, per training video, ``teacher.cache_views`` student clips (uint8
``3 x T x S x S``) and as many rows of teacher logits (float32, one per class), and per
validation video ``student.val_clips_per_video`` clips (``kdsearch.train.cache``,
docs/clip-cache.md). The videos are counted from the listing (folders or list files; for the
synthetic set, its settings), before any is probed: videos found unusable later only make the
cache smaller, so the figure is an upper estimate. No torch, no decoding; the data layouts are
imported inside the functions, as in :mod:`kdsearch.config.load`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kdsearch import storage
from kdsearch.config.schema import SpaceConfig
from kdsearch.text import plural

#: Headers, the logits table's overhead and ``meta.json``, as kdsearch.train.cache counts them.
OVERHEAD = 1 << 20
# The names kdsearch.train.cache gives a cache's files (it may not be imported here).
_META, _TRAIN_CLIPS = "meta.json", "train_clips.npy"


@dataclass(frozen=True)
class CacheEstimate:
    """The clip cache a search will build: ``needed`` bytes in ``folder`` (the nearest
    existing folder of which has ``free`` bytes free)."""

    needed: int
    train_videos: int
    views: int
    val_videos: int
    val_clips: int
    classes: int
    folder: Path
    free: int
    reusable: Path | None  # a complete cache there of the same shape, which may be reused

    @property
    def fits(self) -> bool:
        return self.reusable is not None or self.needed <= self.free

    def describe(self) -> str:
        line = (f"clip cache: about {_human(self.needed)} ({self.needed} bytes: "
                f"{self.train_videos} training videos x {self.views} views and "
                f"{self.val_videos} validation videos x {plural(self.val_clips, 'clip')}, "
                f"as listed, before probing) in {self.folder}; {_human(self.free)} free")
        if self.reusable is not None:
            line += f"; a cache of the same shape exists ({self.reusable.name}) and may be reused"
        return line

    def problem(self) -> str | None:
        if self.fits:
            return None
        return (f"teacher.cache_dir: the clip cache needs about {self.needed} bytes "
                f"({_human(self.needed)}) but {self.free} ({_human(self.free)}) are free on the "
                f"disk of {self.folder}; free space there, set teacher.cache_dir to a disk with "
                "room, or lower teacher.cache_views")


def cache_estimate(cfg: SpaceConfig) -> CacheEstimate | None:
    """The clip cache ``cfg`` will build, or None when it builds none (``teacher.cache:
    false``) or its videos cannot be counted before the search (a ``data.root`` URI, a layout
    that does not list: :func:`kdsearch.config.load.load_space` reports that)."""
    if not cfg.teacher.cache:
        return None
    counts = _video_counts(cfg)
    if counts is None:
        return None
    train, val, classes = counts
    needed = cache_bytes(cfg, train, val, classes)
    root = cfg.teacher.cache_dir or storage.join(cfg.storage, "cache")
    # A cache for a URI is built on this node's disk and uploaded (kdsearch.train.cache).
    folder = storage.node_local_root() if storage.is_uri(root) else Path(root)
    return CacheEstimate(needed, train, cfg.teacher.cache_views, val,
                         cfg.student.val_clips_per_video, classes, folder,
                         shutil.disk_usage(_existing(folder)).free,
                         None if storage.is_uri(root) else _reusable(folder, cfg, classes))


def cache_bytes(cfg: SpaceConfig, train: int, val: int, classes: int) -> int:
    """The size of the clip cache of ``train`` and ``val`` videos: every stored clip (the
    student's, uint8), the teacher's logits (float32) and ``OVERHEAD`` for headers and meta;
    the estimate before a search and the check before a build (kdsearch.train.cache)."""
    clip = cfg.student.clip
    clip_bytes = 3 * clip.num_frames * clip.crop_size ** 2
    rows = train * cfg.teacher.cache_views
    return ((rows + val * cfg.student.val_clips_per_video) * clip_bytes + rows * classes * 4
            + OVERHEAD)


def _video_counts(cfg: SpaceConfig) -> tuple[int, int, int] | None:
    """Training videos, validation videos and classes, as the layout lists them."""
    from kdsearch.data.layouts import LayoutError, list_split

    data = cfg.data
    if data.format == "synthetic":
        from kdsearch.data.synthetic import SYNTHETIC_CLASSES

        n = len(SYNTHETIC_CLASSES)
        return n * data.synthetic.train_per_class, n * data.synthetic.val_per_class, n
    if storage.is_uri(data.root):
        return None
    try:
        train = list_split(Path(data.root), data.format, data.train_split, data.classes)
        if data.val_split is None:
            held_out = round(len(train.entries) * data.val_fraction)
            return len(train.entries) - held_out, held_out, len(train.classes)
        val = list_split(Path(data.root), data.format, data.val_split, train.classes)
    except (LayoutError, OSError):
        return None
    return len(train.entries), len(val.entries), len(train.classes)


def _existing(folder: Path) -> Path:
    """``folder``, or its nearest parent that exists (the cache folder is made later)."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate
    return Path(folder.anchor or ".")


def _reusable(root: Path, cfg: SpaceConfig, classes: int) -> Path | None:
    """A complete cache in ``root`` whose views, clip shapes and classes are ``cfg``'s: the
    search may reuse it instead of building (its key also covers the videos and the teacher
    file, which only the search itself knows), so a full disk is no reason to refuse."""
    import numpy as np

    from kdsearch.config.load import teacher_clip

    clip = cfg.student.clip
    want = {"views": cfg.teacher.cache_views, "teacher_clip": teacher_clip(cfg).model_dump(),
            "val_clips_per_video": cfg.student.val_clips_per_video}
    try:
        folders = sorted(p for p in root.iterdir() if (p / _META).is_file())
    except OSError:
        return None
    for folder in folders:
        try:
            meta = json.loads((folder / _META).read_text())
            with open(folder / _TRAIN_CLIPS, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if major == 1
                        else np.lib.format.read_array_header_2_0)
                shape = read(f)[0]
        except (OSError, ValueError, TypeError):
            continue
        if (all(meta.get(k) == v for k, v in want.items())
                and len(meta.get("classes") or ()) == classes
                and tuple(shape[2:]) == (clip.num_frames, clip.crop_size, clip.crop_size)):
            return folder
    return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")
