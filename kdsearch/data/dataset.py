"""From the space file's ``data`` section to usable videos, a report of unusable ones, and
DataLoaders.

Every video of both splits is probed once (see ``kdsearch.data.index``); those that cannot
be used are left out with their reason, so a broken file never stops a search, and a class
or split left empty stops it before any trial starts.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdsearch import storage
from kdsearch.config import Clip, ConfigError, Data
from kdsearch.data.index import IndexRow, index_path, index_split
from kdsearch.data.layouts import LayoutError, Listing, list_split, stratified_split
from kdsearch.data.media import too_large
from kdsearch.data.synthetic import generate_synthetic
from kdsearch.data.video import PairedClipDataset, VideoClipDataset, VideoRecord
from kdsearch.storage import is_uri

# Clips leave the loader as uint8 RGB; each model normalises its own input (after
# engine.to_model_input), so one clip can feed a teacher and a student trained with different
# statistics.
_RAW = {"uint8": True}
# How many unusable videos are named one per line; the MLflow table holds them all.
_NAMED = 10

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class DataIssue:
    split: str
    path: str
    status: str  # why it was skipped ("empty", "too_short", ...), or "ok" when used anyway
    reason: str
    action: str  # "skipped" or "used"


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    classes: tuple[str, ...]
    train: tuple[VideoRecord, ...]
    val: tuple[VideoRecord, ...]
    issues: tuple[DataIssue, ...]
    fingerprint: str  # changes whenever a used video, its label or its split changes

    def issue_table(self) -> dict[str, list[str]]:
        """Column-wise, as ``MlflowClient.log_table`` takes it."""
        fields = [f.name for f in dataclasses.fields(DataIssue)]
        return {name: [getattr(issue, name) for issue in self.issues] for name in fields}


def prepare_data(data: Data, log: Log | None = None) -> Path:
    """Make sure the dataset exists on disk (generating the synthetic one if asked, copying
    one in an object store to this node's disk); the local folder holding it. ``log`` hears
    the progress of long work."""
    if is_uri(data.root):
        if data.format == "synthetic":
            raise ConfigError([f"data.root: {storage.redact(data.root)!r} is a URI, but format "
                               "synthetic generates its videos on local disk; use a local path"])
        return data_root(data)
    root = Path(data.root)
    if data.format == "synthetic":
        s = data.synthetic
        generate_synthetic(root, train_per_class=s.train_per_class,
                           val_per_class=s.val_per_class, num_frames=s.num_frames,
                           size=s.size, fps=s.fps, seed=s.seed, log=log)
    return root


def known_class_count(data: Data) -> int | None:
    """How many classes ``data`` has, when that is known before the data are read: the
    listed ``data.classes`` or the synthetic set's; None otherwise."""
    if data.classes:
        return len(data.classes)
    if data.format == "synthetic":
        from kdsearch.data.synthetic import SYNTHETIC_CLASSES

        return len(SYNTHETIC_CLASSES)
    return None


def data_root(data: Data) -> Path:
    """The local folder of ``data.root``: the folder itself, or for a URI (``s3://...``) a
    copy on this node's disk, made once per node and reused while the remote is unchanged
    (see kdsearch.storage.copy_to_local; file times are kept, so the fingerprint of the data
    and the teacher's key are the same for every copy)."""
    if not is_uri(data.root):
        return Path(data.root)
    try:
        root = storage.copy_to_local(data.root)
    except OSError as err:  # missing, unreadable, no credentials
        raise ConfigError([f"data.root: {storage.redact(data.root)!r} cannot be copied to "
                           f"local disk: {err}"]) from None
    if not root.is_dir():
        raise ConfigError([f"data.root: {storage.redact(data.root)!r} is a file, not a folder"])
    return root


def local_records(data: Data, records: Sequence[VideoRecord]) -> tuple[VideoRecord, ...]:
    """``records`` (as the driver indexed them) pointing into this node's copy of a
    ``data.root`` URI, copying it first if this node has none; unchanged for a local root."""
    if not is_uri(data.root):
        return tuple(records)
    root = data_root(data)
    out = []
    for record in records:
        parts = record.path.parts
        if record.path.is_relative_to(root) or root.name not in parts:
            out.append(record)
            continue
        relative = parts[parts.index(root.name) + 1:]
        out.append(dataclasses.replace(record, path=root.joinpath(*relative)))
    return tuple(out)


def list_splits(data: Data, root: Path | None = None) -> tuple[Listing, Listing | None]:
    """The training listing and, when the data has a validation split, its listing
    (``root``: the local folder of the data, default :func:`data_root`)."""
    root = root or data_root(data)
    fmt = "video_folder" if data.format == "synthetic" else data.format
    # --dry-run checked the same (kdsearch.config.load); a root copied from a URI, or data
    # changed since, is first listed here: still one line, never a traceback.
    try:
        train = list_split(root, fmt, data.train_split, data.classes)
    except LayoutError as err:
        raise ConfigError([f"data.train_split: {err}"]) from None
    if data.val_split is None:
        return train, None
    try:
        return train, list_split(root, fmt, data.val_split, train.classes)
    except LayoutError as err:
        raise ConfigError([f"data.val_split: {err}"]) from None


def load_dataset(data: Data, clip: Clip, index_fallback: Path, log: Log = print
                 ) -> DatasetSplits:
    """Index both splits, leave unusable videos out (reporting them through ``log``), and
    check that every class keeps some. A ``data.root`` URI is copied to this node's disk
    first; the records point into that copy."""
    root = data_root(data)
    train_listing, val_listing = list_splits(data, root)
    index = {"frame_rate": data.frame_rate, "log": log}

    def rows_of(listing: Listing) -> list[IndexRow]:
        return index_split(root, listing, index_path(root, listing.source, index_fallback),
                           **index)  # type: ignore[arg-type]

    train_rows = rows_of(train_listing)
    if val_listing is None:
        _, val_entries = stratified_split(train_listing, data.val_fraction, data.split_seed)
        val_paths = {e.path for e in val_entries}
        val_rows = [r for r in train_rows if r.path in val_paths]
        train_rows = [r for r in train_rows if r.path not in val_paths]
    else:
        val_rows = rows_of(val_listing)
    need = (clip.num_frames - 1) * clip.stride + 1
    train, train_issues = _usable(root, "train", train_rows, need, data.short_videos)
    val, val_issues = _usable(root, "val", val_rows, need, data.short_videos)
    # Paths left out by the listing (outside the root, bad names, duplicates): the training
    # list's count as training issues even when validation is held out of it.
    train_issues = _listing_issues("train", train_listing) + train_issues
    if val_listing is not None:
        val_issues = _listing_issues("val", val_listing) + val_issues
    classes = train_listing.classes
    splits = DatasetSplits(classes, tuple(train), tuple(val), tuple(train_issues + val_issues),
                           _fingerprint(classes, train_rows, val_rows, train, val,
                                        root if is_uri(data.root) else None))
    for line in summarize(splits):  # before the check: its error points at these reasons
        log(line)
    _check_classes(classes, {"train": train, "val": val}, train_issues + val_issues)
    return splits


def _listing_issues(split: str, listing: Listing) -> list[DataIssue]:
    return [DataIssue(split, s.path, s.status, s.reason, "skipped") for s in listing.skipped]


def _usable(root: Path, split: str, rows: list[IndexRow], need: int, short: str
            ) -> tuple[list[VideoRecord], list[DataIssue]]:
    records, issues = [], []
    for row in rows:
        issue = _issue(split, row, need, short)
        if issue is not None:
            issues.append(issue)
            if issue.action == "skipped":
                continue
        records.append(VideoRecord(root / row.path, row.label, row.num_frames,
                                   row.kind, row.rotation))  # type: ignore[arg-type]
    return records, issues


def _issue(split: str, row: IndexRow, need: int, short: str) -> DataIssue | None:
    if row.status != "ok":
        return DataIssue(split, row.path, row.status, row.reason, "skipped")
    large = too_large(row.width, row.height)  # an index probed before the limit existed
    if large:
        return DataIssue(split, row.path, "too_large", large, "skipped")
    if row.num_frames < need:
        reason = f"{row.num_frames} frames, the clip needs {need}"
        if short == "skip":
            return DataIssue(split, row.path, "too_short", reason, "skipped")
        return DataIssue(split, row.path, "padded", reason + "; last frame repeated", "used")
    remarks = [row.reason] if row.reason else []
    if row.rotation:
        remarks.append(f"rotated {row.rotation} degrees upright")
    if remarks:
        return DataIssue(split, row.path, "ok", "; ".join(remarks), "used")
    return None


def _check_classes(classes: Sequence[str], splits: dict[str, list[VideoRecord]],
                   issues: list[DataIssue]) -> None:
    problems = []
    for split, records in splits.items():
        counts = collections.Counter(r.label for r in records)
        skipped = sum(i.split == split and i.action == "skipped" for i in issues)
        if not records:
            problems.append(f"data: the {split} split has no usable video (skipped: {skipped};"
                            " see the reasons above)")
            continue
        for label, name in enumerate(classes):
            if counts[label] == 0:
                problems.append(f"data: class {name!r} has no usable video in the {split} split"
                                f" (skipped in that split: {skipped}; see the reasons above)")
    if problems:
        raise ConfigError(problems)


def _fingerprint(classes: Sequence[str], train_rows: list[IndexRow], val_rows: list[IndexRow],
                 train: list[VideoRecord], val: list[VideoRecord],
                 copy_root: Path | None = None) -> str:
    """``copy_root``: the node-local copy of a ``data.root`` URI, whose place on disk differs
    between nodes; paths inside it count relative to it."""
    used = {str(r.path.relative_to(copy_root) if copy_root else r.path) for r in (*train, *val)}
    rows = [(split, r.path, r.label, r.size, r.mtime_ns, r.content, r.num_frames)
            for split, part in (("train", train_rows), ("val", val_rows)) for r in part]
    payload = {"classes": list(classes), "used": sorted(used), "rows": rows}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def summarize(splits: DatasetSplits) -> list[str]:
    """Lines for people: counts per split, skipped videos by reason, the first few by name."""
    lines = [f"data: {len(splits.classes)} classes, {len(splits.train)} training and "
             f"{len(splits.val)} validation videos usable"]
    for action, verb in (("skipped", "skipped"), ("used", "used with care")):
        chosen = [i for i in splits.issues if i.action == action]
        if not chosen:
            continue
        counts = collections.Counter(i.status if i.status != "ok" else i.reason.split(":")[0]
                                     for i in chosen)
        lines.append(f"data: {len(chosen)} videos {verb}: "
                     + ", ".join(f"{n} {what}" for what, n in counts.most_common()))
        if action == "skipped":
            lines += [f"  {i.path}: {i.reason or i.status}" for i in chosen[:_NAMED]]
            if len(chosen) > _NAMED:
                lines.append(f"  ... and {len(chosen) - _NAMED} more (the data_issues table "
                             "of the search's MLflow run lists them all)")
    return lines


def make_loaders(train: Sequence[VideoRecord], val: Sequence[VideoRecord], clip: Clip,
                 batch_size: int, *, val_clips_per_video: int, num_workers: int, seed: int,
                 teacher: Clip | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of uint8 clips. With ``teacher`` (a teacher run
    online), training batches also carry the teacher's own clip of each view, fourth."""
    shape = {"num_frames": clip.num_frames, "stride": clip.stride, "crop_size": clip.crop_size}
    train_ds: Dataset[Any]
    if teacher is None:
        train_ds = VideoClipDataset(train, train=True, seed=seed, **shape, **_RAW)  # type: ignore[arg-type]
    else:
        train_ds = PairedClipDataset(train, student=_shape(clip), teacher=_shape(teacher),
                                     seed=seed)
    val_ds = VideoClipDataset(val, train=False, clips_per_video=val_clips_per_video, seed=seed,
                              **shape, **_RAW)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    common = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=False,
                              generator=generator, **common)  # type: ignore[arg-type]
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False,
                            **common)  # type: ignore[arg-type]
    return train_loader, val_loader


def _shape(clip: Clip) -> tuple[int, int, int]:
    return clip.num_frames, clip.stride, clip.crop_size
