"""kdsearch.data.index: the Parquet index of probed videos, rebuilt only where files changed."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdsearch.data import index as index_module
from kdsearch.data.index import SCHEMA, index_path, index_split, read_index
from kdsearch.data.layouts import list_split
from kdsearch.testing.media import write_frame_folder, write_test_video

from .helpers import frame_set, video_set


def test_index_is_parquet_beside_the_data_with_one_row_per_video(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    listing = list_split(root, "video_folder", "train")
    path = index_path(root, listing.source, tmp_path / "fallback")
    assert path == root / ".kdsearch" / "train.parquet"
    rows = index_split(root, listing, path, log=lambda _: None)
    table = pq.read_table(path)
    assert table.schema.names == SCHEMA.names and table.num_rows == 4
    row = rows[0]
    assert (row.path, row.status, row.num_frames, row.width, row.height) == \
        ("train/kick/kick0.mp4", "ok", 12, 64, 48)
    assert row.fps == pytest.approx(16) and row.duration == pytest.approx(12 / 16)
    # The index folder is hidden: listing the split again does not see it.
    assert list_split(root, "video_folder", "train") == listing


def test_index_probes_only_new_or_changed_files(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    probed: list[str] = []
    real = index_module.probe_video
    monkeypatch.setattr(index_module, "probe_video",
                        lambda p: probed.append(Path(p).name) or real(p))
    path = root / ".kdsearch" / "train.parquet"

    def build() -> list[index_module.IndexRow]:
        return index_split(root, list_split(root, "video_folder", "train"), path,
                           log=lambda _: None)

    build()
    assert sorted(probed) == ["kick0.mp4", "kick1.mp4", "run0.mp4", "run1.mp4"]
    probed.clear()
    mtime = path.stat().st_mtime_ns
    build()
    assert probed == [] and path.stat().st_mtime_ns == mtime  # unchanged: not even rewritten
    write_test_video(root / "train" / "run" / "run1.mp4", num_frames=20)  # replaced in place
    write_test_video(root / "train" / "run" / "run2.mp4", num_frames=9)
    rows = build()
    assert sorted(probed) == ["run1.mp4", "run2.mp4"]
    assert {r.path: r.num_frames for r in rows}["train/run/run1.mp4"] == 20
    assert len(read_index(path)) == 5


def test_index_of_frame_folders_rebuilds_when_a_frame_is_added(tmp_path: Path) -> None:
    root = frame_set(tmp_path / "f", per_class=1)
    listing = list_split(root, "frame_folder", "train")
    path = tmp_path / "idx.parquet"
    rows = index_split(root, listing, path, frame_rate=5.0, log=lambda _: None)
    assert {(r.num_frames, r.fps, r.duration) for r in rows} == {(10, 5.0, 2.0)}
    folder = root / "train" / "kick" / "kick_000"
    write_frame_folder(tmp_path / "extra", num_frames=11)
    os.replace(tmp_path / "extra" / "img_00011.jpg", folder / "img_00011.jpg")
    rows = index_split(root, listing, path, frame_rate=5.0, log=lambda _: None)
    assert {r.path: r.num_frames for r in rows}["train/kick/kick_000"] == 11


def test_index_of_a_read_only_dataset_goes_to_the_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = video_set(tmp_path / "d", per_class=1)
    # Tests run as root here, which writes through permission bits: ask as a user would.
    monkeypatch.setattr(index_module.os, "access", lambda path, mode: False)
    path = index_path(root, "train", tmp_path / "fallback")
    assert path.parent.parent == tmp_path / "fallback" and path.name == "train.parquet"
    rows = index_split(root, list_split(root, "video_folder", "train"), path,
                       log=lambda _: None)
    assert read_index(path) == rows and not (root / ".kdsearch").exists()
    other = video_set(tmp_path / "e", per_class=1)
    assert index_path(other, "train", tmp_path / "fallback").parent != path.parent


def test_an_index_from_another_version_is_ignored(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=1)
    listing = list_split(root, "video_folder", "train")
    path = tmp_path / "idx.parquet"
    index_split(root, listing, path, log=lambda _: None)
    table = pq.read_table(path).replace_schema_metadata({"kdsearch.index_version": "0"})
    pq.write_table(table, path)
    assert read_index(path) == []
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert read_index(tmp_path / "junk.parquet") == []



def test_a_video_changed_with_its_mtime_restored_is_probed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    path = root / ".kdsearch" / "train.parquet"
    listing = list_split(root, "video_folder", "train")
    before = index_split(root, listing, path, log=lambda _: None)
    video = root / "train" / "run" / "run1.mp4"
    st = video.stat()
    # Rewritten in place, same size, its modification time put back.
    data = bytearray(video.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    video.write_bytes(bytes(data))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (video.stat().st_size, video.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    probed: list[str] = []
    real = index_module.probe_video
    monkeypatch.setattr(index_module, "probe_video",
                        lambda p: probed.append(Path(p).name) or real(p))
    after = index_split(root, listing, path, log=lambda _: None)
    assert probed == ["run1.mp4"]
    old, new = ({r.path: r for r in rows}["train/run/run1.mp4"] for rows in (before, after))
    assert (old.size, old.mtime_ns) == (new.size, new.mtime_ns) and old.content != new.content


def test_the_dataset_fingerprint_follows_the_content(tmp_path: Path) -> None:
    from kdsearch.config import Clip, Data
    from kdsearch.data.dataset import load_dataset

    root = video_set(tmp_path / "d", per_class=2)
    data = Data(format="video_folder", root=str(root))
    clip = Clip(num_frames=4, stride=1, crop_size=32)

    def fingerprint() -> str:
        return load_dataset(data, clip, tmp_path / "fb", log=lambda _: None).fingerprint

    first = fingerprint()
    video = root / "train" / "run" / "run1.mp4"
    st = video.stat()
    content = bytearray(video.read_bytes())
    content[-10:] = bytes(10)  # the tail of the file, size and mtime kept
    video.write_bytes(bytes(content))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint() != first


@pytest.mark.parametrize("how", ["truncated", "zeroed", "middle", "missing"])
def test_a_damaged_index_is_built_again(tmp_path: Path, how: str) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    listing = list_split(root, "video_folder", "train")
    path = root / ".kdsearch" / "train.parquet"
    rows = index_split(root, listing, path, log=lambda _: None)
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size - 20)
    elif how == "zeroed":
        path.write_bytes(bytes(size))
    elif how == "middle":  # the column pages in the middle of the file
        with open(path, "r+b") as f:
            f.seek(size // 3)
            f.write(bytes(size // 6))
    else:
        path.unlink()
    assert read_index(path) == []
    said: list[str] = []
    assert index_split(root, listing, path, log=said.append) == rows
    assert said[0] == "indexing train: probing 4 videos"
    assert read_index(path) == rows
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.parquet"]
