"""Data stays inside data.root: listed paths that climb out of it (``..``, absolute paths,
symlinks), the same file listed twice, names that are not UTF-8 and frames too large to decode
are left out with their reasons, never opened, and the rest of the data is still used."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdsearch.config import Clip, ConfigError, Data
from kdsearch.config.load import load_space
from kdsearch.data.dataset import DatasetSplits, load_dataset, summarize
from kdsearch.data.index import index_path, index_split, read_index, write_index
from kdsearch.data.layouts import LayoutError, list_split
from kdsearch.data.media import MAX_PIXELS
from kdsearch.data.probe import probe_frames, probe_video
from kdsearch.testing import write_tiny_space
from kdsearch.testing.media import write_frame_folder, write_test_video

from .helpers import data, video_set

CLIP = Clip(num_frames=4, stride=2, crop_size=32)
# Just above the limit (4096x2160), so that the test video encodes in a fraction of a second.
LARGE = (4160, 2176)


def annotated(root: Path, train: str, val: str = "a.mp4 a\nb.mp4 b\n") -> Data:
    for name in ("a", "b", "b2"):
        write_test_video(root / f"{name}.mp4", num_frames=8)
    (root / "train.txt").write_bytes(train.encode() if isinstance(train, str) else train)
    (root / "val.txt").write_text(val)
    return Data.model_validate({"format": "annotation_list", "root": str(root),
                                "train_split": "train.txt", "val_split": "val.txt"})


def load(cfg: Data, tmp_path: Path) -> tuple[DatasetSplits, list[str]]:
    lines: list[str] = []
    splits = load_dataset(cfg, CLIP, tmp_path / "fallback", log=lines.append)
    return splits, lines


def skipped(splits: DatasetSplits) -> dict[str, tuple[str, str]]:
    return {i.path: (i.status, i.reason) for i in splits.issues if i.action == "skipped"}


def indexed_paths(root: Path) -> set[str]:
    return {row.path for name in ("train", "val") for row in
            read_index(root / ".kdsearch" / f"{name}.txt.parquet")}


def write_large_video(path: Path, width: int = LARGE[0], height: int = LARGE[1]) -> Path:
    """Two black frames: a few KB on disk, far more pixels per frame than the limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for index in range(2):
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_paths_out_of_the_root_are_skipped_and_never_indexed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_test_video(outside / "secret.mp4", num_frames=8)
    (outside / "passwd").write_text("root:x:0:0\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    train = ("a.mp4 a\nb.mp4 b\n../outside/secret.mp4 a\n"
             f"{outside / 'passwd'} b\nlink.mp4 a\nlinked_dir/secret.mp4 b\n"
             f"{root / 'b2.mp4'} b\n")
    splits, lines = load(annotated(root, train), tmp_path)
    found = skipped(splits)
    assert {path: status for path, (status, _) in found.items()} == {
        "../outside/secret.mp4": "outside_root", str(outside / "passwd"): "outside_root",
        "link.mp4": "outside_root", "linked_dir/secret.mp4": "outside_root"}
    assert "outside data.root" in found["../outside/secret.mp4"][1]
    assert "(line 3)" in found["../outside/secret.mp4"][1]
    assert "a symlink" in found["link.mp4"][1] and "a symlink" in found["linked_dir/secret.mp4"][1]
    # An absolute path inside the root is used, by its path relative to the root.
    assert sorted(r.path.name for r in splits.train) == ["a.mp4", "b.mp4", "b2.mp4"]
    assert indexed_paths(root) == {"a.mp4", "b.mp4", "b2.mp4"}
    # Where a symlink leads is never written down: not in the report, not in the index.
    report = "\n".join(lines + summarize(splits))
    assert "outside data.root" in report and "secret.mp4" in report
    assert str(outside / "secret.mp4") not in report
    index_bytes = b"".join(p.read_bytes() for p in (root / ".kdsearch").glob("*.parquet"))
    assert b"outside" not in index_bytes and b"secret" not in index_bytes


def test_everything_out_of_the_root_is_one_line_at_dry_run(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.txt").write_text("../x.mp4 a\n/etc/passwd b\n")
    with pytest.raises(LayoutError) as info:
        list_split(root, "annotation_list", "train.txt")
    assert str(info.value) == (
        f"annotation list {root / 'train.txt'}: none of its 2 entries can be used; left out: "
        "2 outside_root (first: ../x.mp4: outside data.root; paths must lead to files inside "
        "it (line 1))")
    space = write_tiny_space(tmp_path, data={
        "format": "annotation_list", "root": "d", "train_split": "train.txt",
        "val_split": None, "classes": ["a", "b"]})
    with pytest.raises(ConfigError) as config_error:
        load_space(space, cwd=tmp_path)
    assert any(p.startswith("data.train_split: annotation list ") and "outside_root" in p
               for p in config_error.value.problems), config_error.value.problems


def test_symlinks_in_a_video_folder(tmp_path: Path) -> None:
    outside = write_test_video(tmp_path / "elsewhere" / "x.mp4", num_frames=12)
    root = video_set(tmp_path / "d", per_class=3)
    kick, run = root / "train" / "kick", root / "train" / "run"
    (kick / "out.mp4").symlink_to(outside)
    (kick / "alias.mp4").symlink_to(kick / "kick0.mp4")  # same file, same class: used once
    (run / "kick1.mp4").symlink_to(kick / "kick1.mp4")  # same file in two classes: dropped
    splits, _ = load(data(root), tmp_path)
    found = skipped(splits)
    assert {path: status for path, (status, _) in found.items()} == {
        "train/kick/out.mp4": "outside_root", "train/kick/alias.mp4": "duplicate",
        "train/kick/kick1.mp4": "conflicting_labels",
        "train/run/kick1.mp4": "conflicting_labels"}
    assert found["train/kick/alias.mp4"][1] == ("the same file as train/kick/kick0.mp4, with "
                                                "the same label; used once")
    assert "'kick'" in found["train/run/kick1.mp4"][1] and "'run'" in \
        found["train/run/kick1.mp4"][1]
    used = sorted(str(r.path.relative_to(root)) for r in splits.train)
    assert used == ["train/kick/kick0.mp4", "train/kick/kick2.mp4", "train/run/run0.mp4",
                    "train/run/run1.mp4", "train/run/run2.mp4"]


def test_the_same_file_listed_twice(tmp_path: Path) -> None:
    train = "a.mp4 a\n./a.mp4 a\nb.mp4 b\nsub/../b.mp4 a\nb2.mp4 b\n"
    (tmp_path / "d" / "sub").mkdir(parents=True)
    splits, lines = load(annotated(tmp_path / "d", train), tmp_path)
    found = skipped(splits)
    assert found == {
        "a.mp4": ("duplicate", "the same file as a.mp4 (line 1) (line 2), with the same label; "
                               "used once"),
        "b.mp4": ("conflicting_labels", "one file listed with different labels (b.mp4 "
                                        "(line 3) as 'b', b.mp4 (line 4) as 'a'); all dropped")}
    # Both conflicting entries are dropped, one of them reported per line.
    assert [i.reason for i in splits.issues].count(found["b.mp4"][1]) == 2
    assert sorted((r.path.name, r.label) for r in splits.train) == [("a.mp4", 0), ("b2.mp4", 1)]
    assert any("2 conflicting_labels" in line and "1 duplicate" in line for line in lines)


def test_names_that_are_not_utf8_are_skipped(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    bad = os.fsencode(root / "train" / "kick") + b"/\xff\xfe.mp4"
    os.rename(os.fsencode(write_test_video(tmp_path / "v.mp4", num_frames=12)), bad)
    splits, lines = load(data(root), tmp_path)
    assert skipped(splits) == {"train/kick/\\xff\\xfe.mp4": (
        "bad_name", "the name is not valid UTF-8; rename the file")}
    assert len(splits.train) == 4 and len(splits.val) == 4
    assert "  train/kick/\\xff\\xfe.mp4: the name is not valid UTF-8; rename the file" in lines
    assert len(read_index(root / ".kdsearch" / "train.parquet")) == 4
    # In a list file too, which is read as bytes where it is not UTF-8.
    list_root = tmp_path / "ann"
    cfg = annotated(list_root, b"a.mp4 a\nb.mp4 b\n\xe9t\xe9.mp4 a\n")
    splits, _ = load(cfg, tmp_path)
    assert skipped(splits) == {"\\xe9t\\xe9.mp4": (
        "bad_name", "the name is not valid UTF-8 (line 3); rename the file")}


def test_a_frame_named_in_bytes_is_indexed(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "f" / "train" / "kick" / "v0", num_frames=4)
    os.rename(os.fsencode(folder / sorted(os.listdir(folder))[-1]),
              os.fsencode(folder) + b"/\xff_0009.jpg")
    listing = list_split(tmp_path / "f", "frame_folder", "train")
    (row,) = index_split(tmp_path / "f", listing, index_path(tmp_path / "f", "train", tmp_path))
    assert (row.status, row.num_frames) == ("ok", 4)


def test_frames_larger_than_the_limit_are_never_decoded(tmp_path: Path) -> None:
    assert LARGE[0] * LARGE[1] > MAX_PIXELS
    info = probe_video(write_large_video(tmp_path / "big.mkv"))
    assert (info.status, info.num_frames) == ("too_large", 0)
    assert info.reason.startswith("4160x2176 is larger than the limit of 8847360 pixels "
                                  "per frame (4096x2160)")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", LARGE).save(folder / f"{i}.png")
    assert probe_frames(folder).status == "too_large"
    assert probe_video(write_large_video(tmp_path / "ok.mkv", 4096, 2160)).status == "ok"


def test_an_oversized_video_is_skipped_and_the_rest_used(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    write_large_video(root / "train" / "run" / "huge.mkv")
    splits, lines = load(data(root), tmp_path)
    ((status, reason),) = skipped(splits).values()
    assert status == "too_large" and reason.startswith("4160x2176 is larger than the limit")
    assert len(splits.train) == 4
    assert "  train/run/huge.mkv: " + reason in lines
    # An index probed before the limit existed says "ok": the dataset still skips it.
    cache = root / ".kdsearch" / "train.parquet"
    write_index(cache, [dataclasses.replace(r, status="ok", reason="", num_frames=2)
                        for r in read_index(cache)])
    assert pq.read_table(cache).column("status").to_pylist().count("ok") == 5
    again, _ = load(data(root), tmp_path)
    assert list(skipped(again).values()) == [("too_large", reason)]


def test_video_folder_with_a_class_not_utf8_is_one_line(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=1, splits=("train",))
    os.rename(os.fsencode(root / "train" / "run"), os.fsencode(root / "train") + b"/r\xffn")
    message = r"class folder .*/train/r\\xffn has a name that is not valid UTF-8"
    with pytest.raises(LayoutError, match=message):
        list_split(root, "video_folder", "train")
    # Where the search lists the data itself (a root copied from a URI): one line too.
    with pytest.raises(ConfigError, match="data.train_split: " + message):
        load(data(root, train_split="train", val_split=None), tmp_path)


def test_a_frame_folder_with_a_frame_linked_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"not for the search")
    root = tmp_path / "f"
    for name in ("kick", "run"):
        for i in range(2):
            write_frame_folder(root / "train" / name / f"{name}{i}", num_frames=8)
    (root / "train" / "run" / "run1" / "00009.jpg").symlink_to(tmp_path / "secret.jpg")
    listing = list_split(root, "frame_folder", "train")
    assert [e.path for e in listing.entries] == ["train/kick/kick0", "train/kick/kick1",
                                                 "train/run/run0"]
    (left_out,) = listing.skipped
    assert (left_out.path, left_out.status, left_out.reason) == (
        "train/run/run1", "outside_root",
        "frame 00009.jpg is a symlink that leads outside data.root")


def test_a_long_line_is_quoted_short(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("v.mp4 0\n" + "x" * 100_000 + "\n")
    with pytest.raises(LayoutError) as info:
        list_split(tmp_path, "annotation_list", "l.txt", ["a"])
    assert str(info.value) == (f"{tmp_path / 'l.txt'}:2: expected 'path label', got "
                               f"'{'x' * 60}'... (100000 chars)")
