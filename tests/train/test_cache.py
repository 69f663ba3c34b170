"""The clip and teacher-output cache: same views as online, built once, read without a teacher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdsearch import storage
from kdsearch.config import SpaceConfig
from kdsearch.config.load import load_space
from kdsearch.data.dataset import DatasetSplits, load_dataset, prepare_data
from kdsearch.models import build_model
from kdsearch.models.checkpoints import load_teacher
from kdsearch.storage import ArtifactError, DiskFullError
from kdsearch.testing import write_tiny_space
from kdsearch.train.cache import (
    LOGITS,
    META,
    TRAIN_CLIPS,
    VAL_CLIPS,
    CachedTrainBatches,
    CachedValBatches,
    ClipCache,
    _Views,
    cache_key,
    prepare_cache,
)
from kdsearch.train.loop import to_model_input
from kdsearch.train.losses import kd_loss
from kdsearch.train.teacher import prepare_teacher
from kdsearch.train.trial import TrialContext, fit


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[SpaceConfig, DatasetSplits, Path, Path]:
    folder = tmp_path_factory.mktemp("cache")
    cfg = load_space(write_tiny_space(folder), cwd=folder)
    prepare_data(cfg.data)
    data = load_dataset(cfg.data, cfg.student.clip, folder / "idx", log=lambda _: None)
    teacher = prepare_teacher(cfg, data, log=lambda _: None)
    cache = Path(prepare_cache(cfg, data, teacher.path, log=lambda _: None))
    return cfg, data, teacher.path, cache


def test_cache_holds_every_view_and_validation_clip(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path]) -> None:
    cfg, data, _, folder = built
    cache = ClipCache.open(folder)
    views = cfg.teacher.cache_views
    clip = cfg.student.clip
    shape = (3, clip.num_frames, clip.crop_size, clip.crop_size)
    train = cache.train_clips()
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    assert train.shape == (len(data.train) * views, *shape)
    assert cache.val_clips().shape == (len(data.val) * cfg.student.val_clips_per_video, *shape)
    assert cache.teacher_logits().shape == (len(data.train) * views, len(data.classes))
    assert cache.train_labels.tolist() == [r.label for r in data.train]
    assert train.max() > 0  # real pixels, not the zeros of an unwritten map


def test_kd_loss_from_the_cache_equals_the_online_kd_loss(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path]) -> None:
    cfg, data, teacher_path, folder = built
    cache = ClipCache.open(folder)
    clips, labels, videos, cached_logits = next(iter(
        CachedTrainBatches(cache, batch_size=6, seed=0).epoch(1)))
    rows = [int(r) for r in _rows_of(cache, clips)]
    # Online: decode the same views again and run the teacher on them.
    views = _Views(data.train, cfg)
    online = torch.stack([views[r][0] for r in rows])
    assert torch.equal(online, clips)
    # The teacher scored its own clip of each view: more frames than the student's.
    teacher_clips = torch.stack([views[r][2] for r in rows])
    assert teacher_clips.shape[2] == 8 and clips.shape[2] == cfg.student.clip.num_frames == 4
    assert [r // cache.views for r in rows] == videos.tolist()
    teacher = load_teacher(teacher_path, torch.device("cpu"))
    torch.manual_seed(0)
    student = build_model("tiny3d", len(data.classes), "none", "student").eval()
    with torch.no_grad():
        online_logits = teacher(to_model_input(teacher_clips, torch.device("cpu")))
        student_logits = student(to_model_input(clips, torch.device("cpu")))
    assert torch.allclose(online_logits, cached_logits, atol=1e-5)
    from_cache = kd_loss(student_logits, cached_logits, labels, 0.7, 4.0)
    from_teacher = kd_loss(student_logits, online_logits, labels, 0.7, 4.0)
    for a, b in zip(from_cache, from_teacher, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)


def _rows_of(cache: ClipCache, clips: torch.Tensor) -> list[int]:
    """Which cached rows a batch's clips are (each clip matches exactly one row)."""
    train = torch.from_numpy(np.array(cache.train_clips()))
    flat = train.reshape(len(train), -1)
    return [int((flat == clip.reshape(1, -1)).all(1).nonzero()[0, 0]) for clip in clips]


def test_an_epoch_shows_every_video_once_in_an_order_fixed_by_seed_and_epoch(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path]) -> None:
    cache = ClipCache.open(built[3])
    batches = CachedTrainBatches(cache, batch_size=5, seed=3)

    def order(epoch: int) -> list[int]:
        return [int(v) for _, _, videos, _ in batches.epoch(epoch) for v in videos]

    first = order(1)
    assert sorted(first) == list(range(len(cache.train_labels)))
    assert order(1) == first and order(2) != first
    assert len(list(batches.epoch(1))) == len(batches) == -(-len(first) // 5)
    labels = [int(label) for _, labels, _, _ in batches.epoch(1) for label in labels]
    assert labels == [int(cache.train_labels[v]) for v in first]
    val = list(CachedValBatches(cache, batch_size=4))
    assert sum(len(b[0]) for b in val) == len(cache.val_labels)


def test_a_trial_reads_the_cache_without_the_teacher(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path) -> None:
    cfg, data, _, folder = built
    # No teacher file exists: a trial that tried to load it would fail.
    ctx = TrialContext(cfg, data.classes, str(tmp_path / "no-teacher.pt"), data.train,
                       data.val, cache=str(folder))
    reports: list[dict[str, Any]] = []
    fit(ctx, {"alpha": 0.5, "temperature": 2.0}, lambda m, _: reports.append(m))
    assert [m["epoch"] for m in reports] == [1, 2]
    assert all(m["train_kd"] > 0 for m in reports)
    assert reports[0]["train_loss"] == pytest.approx(
        0.5 * reports[0]["train_ce"] + 0.5 * reports[0]["train_kd"], rel=1e-4)


def test_the_same_settings_reuse_the_cache_and_other_settings_rebuild(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path]) -> None:
    cfg, data, teacher_path, folder = built
    said: list[str] = []
    assert prepare_cache(cfg, data, teacher_path, log=said.append) == str(folder)
    assert said == [f"cache: reusing {folder}"]
    for update in ({"teacher": cfg.teacher.model_copy(update={"cache_views": 2})},
                   {"student": cfg.student.model_copy(update={"clip": cfg.student.clip.model_copy(
                       update={"num_frames": 6})})},
                   {"teacher": cfg.teacher.model_copy(update={"clip": None})},
                   {"search": cfg.search.model_copy(update={"seed": 1})}):
        assert cache_key(cfg.model_copy(update=update), data, teacher_path) != folder.name


def test_a_failed_build_leaves_no_cache(built: tuple[SpaceConfig, DatasetSplits, Path, Path],
                                        tmp_path: Path) -> None:
    cfg, data, _, _ = built
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = cfg.model_copy(update={"storage": str(tmp_path / "store")})
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for a corrupt file
        prepare_cache(cfg, data, bad, log=lambda _: None)
    assert [p.name for p in (tmp_path / "store" / "cache").iterdir()
            if not p.name.endswith(".lock")] == []


# One search's cache build, slowed down so that two of them overlap for certain: both
# processes wait for each other before they look for the cache, and a build then takes 2 s
# longer, while the other one looks for the cache (with the lock, waits for it) right away.
_BUILD = """
import os, sys, time
from pathlib import Path
from kdsearch.train import cache
from kdsearch.data.dataset import load_dataset
from kdsearch.config.load import load_space
from kdsearch.testing import wait_for_each_other
folder, teacher, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = load_space(folder / "space.yaml", ["storage=store2"], cwd=folder)
data = load_dataset(cfg.data, cfg.student.clip, folder / "idx", log=lambda _: None)
build = cache._build
def slow_build(*args, **kwargs):
    print("BUILDING", flush=True)
    time.sleep(2)
    build(*args, **kwargs)
cache._build = slow_build
wait_for_each_other(ready)
cache.prepare_cache(cfg, data, teacher, log=print)
"""


def test_concurrent_searches_build_the_cache_once(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path) -> None:
    cfg, _, teacher_path, _ = built
    folder = Path(cfg.storage).parent
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(folder), str(teacher_path),
                               str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = "".join(out for out, _ in outputs)
    assert logs.count("BUILDING") == 1, logs
    assert logs.count("cache: built in") == 1 and logs.count("cache: reusing") == 1
    (cache,) = [p for p in (folder / "store2" / "cache").iterdir() if p.is_dir()]
    assert json.loads((cache / META).read_text())["views"] == cfg.teacher.cache_views


def test_a_cache_in_a_filesystem_uri_is_uploaded_once_and_copied_to_each_node(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, data, teacher_path, folder = built
    monkeypatch.setenv("KDSEARCH_NODE_CACHE", str(tmp_path / "driver"))
    remote_root = f"file://{tmp_path / 'bucket'}"
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"cache_dir": remote_root})})
    said: list[str] = []
    location = prepare_cache(cfg, data, teacher_path, log=said.append)
    assert location == f"{remote_root}/{folder.name}"
    assert said[-1] == f"cache: uploaded to {location}"
    uploaded = tmp_path / "bucket" / folder.name
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert prepare_cache(cfg, data, teacher_path, log=said.append) == location
    assert said[-1] == f"cache: reusing {location}"
    # A trial on another node: the first open copies the cache to local disk, later ones reuse.
    monkeypatch.setenv("KDSEARCH_NODE_CACHE", str(tmp_path / "node2"))
    cache = ClipCache.open(location)
    assert cache.folder == tmp_path / "node2" / folder.name
    np.testing.assert_array_equal(cache.train_clips(), ClipCache.open(folder).train_clips())
    mtime = (cache.folder / META).stat().st_mtime_ns
    assert ClipCache.open(location).folder == cache.folder
    assert (cache.folder / META).stat().st_mtime_ns == mtime


# --- Damaged caches, dead builders, full disks. ---

def _copy_of(built: tuple[SpaceConfig, DatasetSplits, Path, Path], root: Path
             ) -> tuple[SpaceConfig, Path]:
    """The built cache copied under ``root``, and settings whose cache root that is."""
    cfg, _, _, folder = built
    shutil.copytree(folder, root / folder.name)
    return cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"cache_dir": str(root)})}), root / folder.name


def _damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size // 2)
    elif how == "zeroed":  # the right size, every byte zero
        path.write_bytes(bytes(size))
    elif how == "middle":  # a block in the middle zeroed
        block = min(4096, size // 4)
        with open(path, "r+b") as f:
            f.seek(size // 2 - block // 2)
            f.write(bytes(block))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "zeroed", "middle", "missing"])
@pytest.mark.parametrize("file", [TRAIN_CLIPS, VAL_CLIPS, LOGITS, META])
def test_a_damaged_cache_is_never_read_and_is_rebuilt(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path, file: str,
        how: str) -> None:
    cfg, data, teacher_path, original = built
    cfg, folder = _copy_of(built, tmp_path / "cache")
    _damage(folder / file, how)
    # A trial opening it gets one line naming the file and what to delete.
    with pytest.raises(ArtifactError) as err:
        ClipCache.open(folder)
    assert "\n" not in str(err.value) and f"delete {folder}" in str(err.value)
    if file != META:
        assert file in str(err.value)
    said: list[str] = []
    assert prepare_cache(cfg, data, teacher_path, log=said.append) == str(folder)
    assert any(line.startswith(f"cache: {folder} is damaged (") for line in said), said
    assert said[-1].startswith("cache: built in")
    rebuilt, good = ClipCache.open(folder), ClipCache.open(original)
    np.testing.assert_array_equal(rebuilt.train_clips(), good.train_clips())
    np.testing.assert_array_equal(rebuilt.val_clips(), good.val_clips())
    np.testing.assert_allclose(rebuilt.teacher_logits(), good.teacher_logits(), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [folder.name,
                                                                      folder.name + ".lock"]


def test_a_cache_folder_without_meta_is_rebuilt_not_enotempty(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path) -> None:
    cfg, data, teacher_path, _ = built
    cfg, folder = _copy_of(built, tmp_path / "cache")
    (folder / META).unlink()
    (folder / "stray.txt").write_text("left by hand")
    for _ in range(2):  # rebuilt once, then reused
        assert prepare_cache(cfg, data, teacher_path, log=lambda _: None) == str(folder)
    assert (folder / META).is_file() and not (folder / "stray.txt").exists()


def test_a_temporary_folder_of_a_dead_builder_is_removed_before_a_build(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path) -> None:
    cfg, data, teacher_path, folder = built
    root = tmp_path / "cache"
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"cache_dir": str(root)})})
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    stale = root / f".{folder.name}.{dead}.tmp"
    stale.mkdir(parents=True)
    (stale / TRAIN_CLIPS).write_bytes(bytes(1000))
    said: list[str] = []
    prepare_cache(cfg, data, teacher_path, log=said.append)
    assert not stale.exists()
    assert said[0] == f"cache: removed {stale.name}, left by a build that did not finish"
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []


def test_a_cache_that_does_not_fit_stops_before_the_build(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, data, teacher_path, folder = built
    root = tmp_path / "cache"
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"cache_dir": str(root)})})
    monkeypatch.setattr(storage.shutil, "disk_usage",
                        lambda _: shutil._ntuple_diskusage(10**6, 10**6 - 5000, 5000))  # type: ignore[attr-defined]
    clip = cfg.student.clip
    views = len(data.train) * cfg.teacher.cache_views
    needed = ((views + len(data.val) * cfg.student.val_clips_per_video)
              * 3 * clip.num_frames * clip.crop_size ** 2 + views * len(data.classes) * 4
              + (1 << 20))
    with pytest.raises(DiskFullError, match=rf"^cache {root / folder.name}: needs {needed} "
                       rf"bytes \(1\.8 MiB\) but 5000 \(4\.9 KiB\) are free on the disk "
                       rf"of {root}$"):
        prepare_cache(cfg, data, teacher_path, log=lambda _: None)
    assert [p.name for p in root.iterdir()] == [folder.name + ".lock"]


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only): a real full disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_during_the_build_is_a_clear_error_and_leaves_nothing(
        built: tuple[SpaceConfig, DatasetSplits, Path, Path], small_disk: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, data, teacher_path, folder = built
    # Fill the disk but for 64 KiB, and let the free-space check pass: the writes hit ENOSPC.
    filler = small_disk / "filler"
    filler.write_bytes(bytes(shutil.disk_usage(small_disk).free - (64 << 10)))
    monkeypatch.setattr(storage, "check_free", lambda *_: None)
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"cache_dir": str(small_disk)})})
    with pytest.raises(DiskFullError, match=rf"^cache {small_disk / folder.name}: the disk is "
                       r"full \(the cache needs \d+ bytes\): free space on ") as err:
        prepare_cache(cfg, data, teacher_path, log=lambda _: None)
    assert "\n" not in str(err.value)
    assert {p.name for p in small_disk.iterdir()} == {"filler", folder.name + ".lock"}
