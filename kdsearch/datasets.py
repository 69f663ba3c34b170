"""From the space file's ``data`` section to DataLoaders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kdsearch.config import Clip, Data
from kdsearch.data import VideoClipDataset, VideoRecord, generate_synthetic, scan_video_folder

Splits = tuple[list[str], list[VideoRecord], list[VideoRecord]]

# Clips leave the loader as raw [0, 1] RGB; each model normalises its own input, so one clip
# can feed a teacher and a student trained with different statistics.
_RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def prepare_data(data: Data) -> Path:
    """Make sure the dataset exists on disk (generating the synthetic one if asked)."""
    root = Path(data.root)
    if data.format == "synthetic":
        s = data.synthetic
        generate_synthetic(root, train_per_class=s.train_per_class,
                           val_per_class=s.val_per_class, num_frames=s.num_frames,
                           size=s.size, fps=s.fps, seed=s.seed)
    return root


def load_splits(data: Data, classes: Sequence[str] | None = None) -> Splits:
    """Class names and the training and validation records; both splits share the classes."""
    root = Path(data.root)
    names, train = scan_video_folder(root, data.train_split, classes or data.classes)
    _, val = scan_video_folder(root, data.val_split, names)
    return names, train, val


def make_loaders(train: list[VideoRecord], val: list[VideoRecord], clip: Clip, batch_size: int,
                 *, val_clips_per_video: int, num_workers: int, seed: int
                 ) -> tuple[DataLoader, DataLoader]:
    shape = {"num_frames": clip.num_frames, "stride": clip.stride, "crop_size": clip.crop_size}
    train_ds = VideoClipDataset(train, train=True, seed=seed, **shape, **_RAW)  # type: ignore[arg-type]
    val_ds = VideoClipDataset(val, train=False, clips_per_video=val_clips_per_video, seed=seed,
                              **shape, **_RAW)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    common = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=False,
                              generator=generator, **common)  # type: ignore[arg-type]
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False,
                            **common)  # type: ignore[arg-type]
    return train_loader, val_loader
