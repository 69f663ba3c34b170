"""The clip and teacher-output cache: decode and run the teacher once per search, not per trial.

Before the first trial, every training video gets ``views`` clips drawn once (start, crop,
flip), decoded and passed through the fine-tuned teacher. The clips are stored as uint8 in a
memory-mapped ``.npy`` file, the teacher's logits in a Parquet table keyed by (video, view).
Validation clips are stored the same way (no teacher needed). Trials map the files read-only:
every trial on a node shares one copy in the page cache instead of decoding its own.

A view is one time span, crop box and flip; the teacher's clip and the student's are both
cut from it, each at its own frames, stride and size (``teacher.clip``, ``student.clip``;
kdsearch.data.video.PairedClipDataset). In each epoch a trial draws one of the views per
video, so the student sees exactly the view the teacher scored and the soft targets are
never stale. No augmentation is applied on top: a
crop or flip would change the clip the teacher's logits belong to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from kdsearch import storage
from kdsearch.config import SpaceConfig, teacher_clip
from kdsearch.config.disk import cache_bytes
from kdsearch.data.dataset import DatasetSplits
from kdsearch.data.video import PairedClipDataset, VideoClipDataset, VideoRecord
from kdsearch.models.checkpoints import load_teacher
from kdsearch.storage import is_uri
from kdsearch.train.loop import autocast, pick_device, to_channels_last, to_model_input

CACHE_VERSION = 3  # 2: the teacher sees its own clip of each view; 3: file records
META = "meta.json"
TRAIN_CLIPS = "train_clips.npy"
VAL_CLIPS = "val_clips.npy"
LOGITS = "teacher_logits.parquet"
FILES = (TRAIN_CLIPS, VAL_CLIPS, LOGITS)

Log = Callable[[str], None]
Batch = tuple[torch.Tensor, ...]


def cache_key(cfg: SpaceConfig, data: DatasetSplits, teacher_path: Path | str) -> str:
    """Everything that changes the cache's content: the videos used, the teacher file, the
    clip shape, the views and the seed."""
    if is_uri(str(teacher_path)):
        size, mtime_ns = storage.stat(teacher_path)
    else:
        stat = Path(teacher_path).stat()
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
    payload = {"version": CACHE_VERSION, "data": data.fingerprint,
               "teacher": [storage.redact(teacher_path), size, mtime_ns],
               "clip": cfg.student.clip.model_dump(),
               "teacher_clip": teacher_clip(cfg).model_dump(), "views": cfg.teacher.cache_views,
               "val_clips": cfg.student.val_clips_per_video, "seed": cfg.search.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare_cache(cfg: SpaceConfig, data: DatasetSplits, teacher_path: Path | str,
                  log: Log = print) -> str:
    """Where the cache for these settings lives, building it if needed.

    The cache root is ``teacher.cache_dir`` (default ``<storage>/cache``): a path every node
    shares, or a pyarrow filesystem URI (``s3://``, ``gs://``, ...) that the cache is uploaded
    to and each node copies to its local disk once (:func:`local_cache`). With a ``storage``
    URI the default root is that URI's ``cache`` folder.

    A cache is reused only when every file matches the sizes and checksums of its
    ``meta.json`` (the whole files are hashed here, once per search); any other one is
    removed and built again.
    """
    key = cache_key(cfg, data, teacher_path)
    root = cfg.teacher.cache_dir or storage.join(cfg.storage, "cache")
    if not is_uri(root):
        return str(_build_locked(Path(root), key, cfg, data, teacher_path, log))
    remote = storage.join(root, key)
    filesystem, path = storage.filesystem(remote)
    if filesystem.get_file_info(f"{path}/{META}").type == pafs.FileType.File:
        problem = verify(local_cache(remote), full=True)
        if problem is None:
            log(f"cache: reusing {storage.redact(remote)}")
            return remote
        log(f"cache: {storage.redact(remote)} is damaged ({problem}): building it again")
        filesystem.delete_dir(path)
    local = _build_locked(storage.node_local_root(), key, cfg, data, teacher_path, log)
    # Object stores have no rename: the metadata file goes last and marks the upload complete.
    for item in sorted(local.iterdir(), key=lambda p: p.name == META):
        storage.upload(item, storage.join(remote, item.name))
    storage.register_copy(remote, local)  # this node's trials need not download it again
    log(f"cache: uploaded to {storage.redact(remote)}")
    return remote


def local_cache(location: str, local_root: Path | None = None) -> Path:
    """A local folder holding the cache at ``location``: the folder itself, or for a URI a
    copy on this node's disk, made once per node (the first trial copies, the others wait;
    see kdsearch.storage.copy_to_local)."""
    if not is_uri(location):
        return Path(location)
    return storage.copy_to_local(location, local_root or storage.node_local_root(),
                                 local_name=storage.name(location))


def _build_locked(root: Path, key: str, cfg: SpaceConfig, data: DatasetSplits,
                  teacher_path: Path | str, log: Log) -> Path:
    """Reuse ``root/key`` when whole, else build it there: atomically, by one process while
    any other waits on the lock. Under the lock, the temporary folders of dead builders are
    removed first and a damaged or incomplete folder is removed before the build."""
    folder = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        for stale in storage.remove_stale(root, key, time.time()):
            log(f"cache: removed {stale.name}, left by a build that did not finish")
        if folder.exists():
            problem = verify(folder, full=True)
            if problem is None:
                log(f"cache: reusing {folder}")
                return folder
            log(f"cache: {folder} is damaged ({problem}): building it again")
            shutil.rmtree(folder)
        needed = _needed_bytes(cfg, data)
        storage.check_free(root, needed, f"cache {folder}")
        tmp = storage.temp_path(folder)
        tmp.mkdir()
        try:
            with storage.full_disk_as_error(
                    f"cache {folder}", f" (the cache needs {needed} bytes): free space on "
                    f"{root}, or set teacher.cache_dir to a disk with room"):
                _build(cfg, data, teacher_path, tmp, log)
                os.replace(tmp, folder)  # a reader sees a whole cache or none
            storage.fsync_dir(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _needed_bytes(cfg: SpaceConfig, data: DatasetSplits) -> int:
    return cache_bytes(cfg, len(data.train), len(data.val), len(data.classes))


def verify(folder: Path, *, full: bool = False) -> str | None:
    """What is wrong with the cache in ``folder`` (None when whole): ``meta.json`` readable and
    of this version, every file of the size (and checksum) it records: sampled blocks always,
    the SHA-256 of the whole file too when ``full``."""
    meta = storage.read_meta(folder / META)
    if meta is None:
        return f"{META} is missing or unreadable"
    if meta.get("version") != CACHE_VERSION:
        return f"{META} is of version {meta.get('version')}, not {CACHE_VERSION}"
    return storage.check_files(folder, meta.get("files"), FILES, full=full)


class _Views(Dataset[tuple[torch.Tensor, int, torch.Tensor]]):
    """View ``v`` of video ``i`` (item ``i * views + v``) with its own seeded randomness, so
    the same settings always draw the same views: (student clip, item, teacher clip)."""

    def __init__(self, records: tuple[VideoRecord, ...], cfg: SpaceConfig) -> None:
        shapes = [(c.num_frames, c.stride, c.crop_size)
                  for c in (cfg.student.clip, teacher_clip(cfg))]
        self.clips = PairedClipDataset(records, student=shapes[0], teacher=shapes[1])
        self.views, self.seed = cfg.teacher.cache_views, cfg.search.seed

    def __len__(self) -> int:
        return len(self.clips) * self.views

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        video, view = divmod(item, self.views)
        rng = np.random.default_rng([self.seed % 2**32, video, view])
        student, teacher = self.clips.view(video, rng)
        return student, item, teacher


def _build(cfg: SpaceConfig, data: DatasetSplits, teacher_path: Path | str, folder: Path,
           log: Log) -> None:
    start = time.monotonic()
    torch.set_num_threads(cfg.resources.teacher_cpus)  # as the teacher stage, reused or not
    device = pick_device(cfg.resources.gpus_per_trial)
    teacher = to_channels_last(load_teacher(teacher_path, device), device,
                               cfg.student.channels_last)
    views = _Views(data.train, cfg)
    shape = teacher_clip(cfg)
    log(f"cache: teacher {cfg.teacher.model} at {shape.num_frames}x{shape.crop_size} px "
        f"(stride {shape.stride}), student at {cfg.student.clip.num_frames}x"
        f"{cfg.student.clip.crop_size} px (stride {cfg.student.clip.stride})")
    log(f"cache: {len(data.train)} training videos x {views.views} views and "
        f"{len(data.val)} validation videos x {cfg.student.val_clips_per_video} clips")
    files: dict[str, storage.FileRecord] = {}
    files[TRAIN_CLIPS], logits = _write_clips(folder / TRAIN_CLIPS, views, cfg, log, teacher,
                                              device)
    assert logits is not None
    video, view = np.divmod(np.arange(len(views)), views.views)
    table = pa.table({"video": pa.array(video, pa.int32()), "view": pa.array(view, pa.int16()),
                      "logits": pa.FixedSizeListArray.from_arrays(
                          pa.array(logits.reshape(-1)), logits.shape[1])})
    files[LOGITS] = storage.write_file(folder / LOGITS, lambda f: pq.write_table(table, f))
    clip = cfg.student.clip
    val = VideoClipDataset(data.val, num_frames=clip.num_frames, stride=clip.stride,
                           crop_size=clip.crop_size, train=False,
                           clips_per_video=cfg.student.val_clips_per_video, uint8=True)
    files[VAL_CLIPS], _ = _write_clips(folder / VAL_CLIPS, _Indexed(val), cfg, log)
    meta = {"version": CACHE_VERSION, "files": files, "views": views.views,
            "classes": list(data.classes),
            "train_labels": [r.label for r in data.train],
            "val_clips_per_video": cfg.student.val_clips_per_video,
            "val_labels": [r.label for r in data.val], "teacher": storage.redact(teacher_path),
            "teacher_clip": shape.model_dump(),
            "seconds": time.monotonic() - start}
    storage.write_meta(folder / META, meta)  # last: the cache is complete
    log(f"cache: built in {time.monotonic() - start:.0f}s")


class _Indexed(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, clips: VideoClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.clips[item][0], item


def _write_clips(path: Path, dataset: Dataset, cfg: SpaceConfig, log: Log,
                 teacher: torch.nn.Module | None = None, device: torch.device | None = None
                 ) -> tuple[storage.FileRecord, np.ndarray | None]:
    """Decode ``dataset`` into a uint8 ``.npy`` at ``path`` (its record); with a teacher,
    also its logits.

    Written with ordinary writes, in order, never through a writable memory map: a full
    disk is then an ENOSPC error, not a SIGBUS that kills the process."""
    n = len(dataset)  # type: ignore[arg-type]
    clip = cfg.student.clip
    shape = (n, 3, clip.num_frames, clip.crop_size, clip.crop_size)
    batch_size = cfg.teacher.batch_size
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.data.num_workers)
    logits: np.ndarray | None = None

    def write(f: Any) -> None:
        nonlocal logits
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        last, written = time.monotonic(), 0
        for done, (clips, items, *teacher_clips) in enumerate(loader, 1):
            # The loader keeps the dataset's order: the items are the next rows of the file.
            assert items[0] == written and len(items) == len(clips), "out-of-order clips"
            f.write(np.ascontiguousarray(clips.numpy(), dtype=np.uint8).tobytes())
            written += len(items)
            if teacher is not None:
                assert device is not None
                with torch.no_grad(), autocast(device, cfg.student.bf16):
                    inputs = to_model_input(teacher_clips[0], device, cfg.student.channels_last)
                    batch = teacher(inputs).float().cpu().numpy()
                if logits is None:
                    logits = np.zeros((n, batch.shape[1]), dtype=np.float32)
                logits[items.numpy()] = batch
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"cache: {path.stem}: {min(done * batch_size, n)}/{n} clips")
        assert written == n, f"{written} of {n} clips decoded"

    record = storage.write_file(path, write)
    return record, logits


@dataclasses.dataclass(frozen=True)
class ClipCache:
    """A built cache, opened read-only: clips are memory-mapped, logits loaded."""

    folder: Path
    views: int
    train_labels: np.ndarray
    val_labels: np.ndarray
    val_clips_per_video: int

    @classmethod
    def open(cls, location: str | Path) -> ClipCache:
        """Open a cache folder, or a cache URI (copied to this node's disk first).

        Every open checks the sizes and sampled checksums of the files (a few MiB read, a few
        ms; the teacher stage hashed them whole before the trials): a damaged cache raises
        :class:`kdsearch.storage.ArtifactError` naming the file and what to delete, never
        trains on garbage."""
        folder = local_cache(str(location))
        problem = verify(folder)
        if problem is not None:
            where = "" if folder == Path(location) else f" (a copy of {storage.redact(location)})"
            raise storage.ArtifactError(
                f"cache {folder}{where}: {problem}; delete {folder} and start the search again "
                "(its teacher stage rebuilds the cache)")
        meta = json.loads((folder / META).read_text())
        return cls(folder, meta["views"], np.asarray(meta["train_labels"], dtype=np.int64),
                   np.asarray(meta["val_labels"], dtype=np.int64), meta["val_clips_per_video"])

    def train_clips(self) -> np.ndarray:
        return np.load(self.folder / TRAIN_CLIPS, mmap_mode="r")

    def val_clips(self) -> np.ndarray:
        return np.load(self.folder / VAL_CLIPS, mmap_mode="r")

    def teacher_logits(self) -> np.ndarray:
        """[videos * views, classes] float32, row ``video * views + view``."""
        column = pq.read_table(self.folder / LOGITS, columns=["logits"])["logits"]
        flat = column.combine_chunks()
        # A copy: Arrow's buffers are read-only, and torch wants writable memory.
        return np.array(flat.values, dtype=np.float32).reshape(len(flat), -1)


class CachedTrainBatches:
    """One epoch of training batches from the cache: (clips uint8, labels, video index,
    teacher logits). Epoch ``e``'s order and views depend only on ``seed`` and ``e``, so a
    resumed trial sees the same epochs as one that never stopped."""

    def __init__(self, cache: ClipCache, batch_size: int, seed: int) -> None:
        self.clips = cache.train_clips()
        self.logits = torch.from_numpy(cache.teacher_logits())
        self.labels = torch.from_numpy(cache.train_labels)
        self.views, self.batch_size, self.seed = cache.views, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed((self.seed % 2**32) * 2**20 + epoch)
        order = torch.randperm(len(self.labels), generator=generator)
        views = torch.randint(0, self.views, (len(self.labels),), generator=generator)
        for i in range(0, len(order), self.batch_size):
            videos = order[i:i + self.batch_size]
            rows = videos * self.views + views[videos]
            # Sorted rows read the memory map front to back; the batch order does not matter.
            rows, videos = _sorted_together(rows, videos)
            clips = torch.from_numpy(self.clips[rows.numpy()])
            yield clips, self.labels[videos], videos, self.logits[rows]


def _sorted_together(rows: torch.Tensor, videos: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    rows, perm = rows.sort()
    return rows, videos[perm]


class CachedValBatches:
    """Validation batches from the cache: (clips uint8, labels, video index)."""

    def __init__(self, cache: ClipCache, batch_size: int) -> None:
        self.clips = cache.val_clips()
        per_video = cache.val_clips_per_video
        self.videos = torch.arange(len(cache.val_labels)).repeat_interleave(per_video)
        self.labels = torch.from_numpy(cache.val_labels).repeat_interleave(per_video)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.labels), self.batch_size):
            part = slice(i, i + self.batch_size)
            clips = torch.from_numpy(np.array(self.clips[part]))  # a copy: the map is read-only
            yield clips, self.labels[part], self.videos[part]
