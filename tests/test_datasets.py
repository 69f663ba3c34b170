"""Dataset layouts, the Parquet index, stratified splits and the handling of broken videos."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdsearch.config import Clip, ConfigError, Data
from kdsearch.data import index as index_module
from kdsearch.data.dataset import load_dataset, summarize
from kdsearch.data.index import SCHEMA, index_path, index_split, read_index
from kdsearch.data.layouts import LayoutError, list_split, stratified_split
from kdsearch.testing.media import write_broken, write_frame_folder, write_test_video

CLIP = Clip(num_frames=4, stride=2, crop_size=32)  # needs 7 frames


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


# --- layouts ---------------------------------------------------------------------------------

def test_video_folder_lists_classes_and_videos(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    (root / "train" / "kick" / "notes.txt").write_text("not listed: not a video name")
    (root / "train" / "kick" / "._kick0.mp4").write_bytes(b"macOS resource fork")
    listing = list_split(root, "video_folder", "train")
    assert listing.classes == ("kick", "run")
    assert [(e.path, e.label, e.kind) for e in listing.entries] == [
        ("train/kick/kick0.mp4", 0, "video"), ("train/kick/kick1.mp4", 0, "video"),
        ("train/run/run0.mp4", 1, "video"), ("train/run/run1.mp4", 1, "video")]


def test_frame_folder_lists_one_entry_per_video_folder(tmp_path: Path) -> None:
    root = frame_set(tmp_path / "f", per_class=2)
    listing = list_split(root, "frame_folder", "val", ["run", "kick"])
    assert listing.classes == ("run", "kick")
    assert [(e.path, e.label, e.kind) for e in listing.entries] == [
        ("val/kick/kick_000", 1, "frames"), ("val/kick/kick_001", 1, "frames"),
        ("val/run/run_000", 0, "frames"), ("val/run/run_001", 0, "frames")]


def test_folder_without_splits_lists_class_folders_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("a", "b"):
        write_test_video(root / name / "v.mkv", num_frames=8)
    listing = list_split(root, "video_folder", None)
    assert listing.source == "." and [e.path for e in listing.entries] == ["a/v.mkv", "b/v.mkv"]


@pytest.mark.parametrize(("split", "classes", "message"), [
    ("test", None, "split folder {root}/test does not exist"),
    ("train", ["kick", "jump"], "class folder {root}/train/jump does not exist"),
])
def test_folder_layout_errors_name_the_path(tmp_path: Path, split: str,
                                            classes: list[str] | None, message: str) -> None:
    root = video_set(tmp_path / "d", per_class=1)
    with pytest.raises(LayoutError, match=message.format(root=root)):
        list_split(root, "video_folder", split, classes)


def test_frame_layout_with_videos_instead_of_folders_is_an_error(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=1)
    with pytest.raises(LayoutError, match="holds no video folders"):
        list_split(root, "frame_folder", "train")


def test_annotation_list_with_names_indices_csv_and_comments(tmp_path: Path) -> None:
    root = tmp_path / "ann"
    write_test_video(root / "clips" / "a b.mp4", num_frames=8)
    write_frame_folder(root / "frames" / "x", num_frames=8)
    (root / "names.txt").write_text("# path label\nclips/a b.mp4 run\n\nframes/x kick\n")
    listing = list_split(root, "annotation_list", "names.txt")
    assert listing.classes == ("kick", "run")  # sorted names when none are declared
    assert [(e.path, e.label, e.kind) for e in listing.entries] == [
        ("clips/a b.mp4", 1, "video"), ("frames/x", 0, "frames")]
    (root / "idx.txt").write_text("clips/a b.mp4 1\nframes/x 0\n")
    assert list_split(root, "annotation_list", "idx.txt", ["kick", "run"]).entries == \
        listing.entries
    (root / "l.csv").write_text("path,label\n\"clips/a b.mp4\",run\nframes/x,0\n")
    assert list_split(root, "annotation_list", "l.csv", ["kick", "run"]).entries == \
        listing.entries


@pytest.mark.parametrize(("text", "classes", "message"), [
    ("v.mp4 0\nv.mp4\n", ["a"], r"idx.txt:2: expected 'path label'"),
    ("v.mp4 0\nv.mp4 5\n", ["a"], r"idx.txt:2: label '5' is neither a class"),
    ("v.mp4 0\nw.mp4 1\n", None, r"labels are class indices; name the classes"),
    ("# only a comment\n", None, r"has no entries"),
])
def test_annotation_list_errors_name_file_and_line(tmp_path: Path, text: str,
                                                   classes: list[str] | None,
                                                   message: str) -> None:
    (tmp_path / "idx.txt").write_text(text)
    with pytest.raises(LayoutError, match=message):
        list_split(tmp_path, "annotation_list", "idx.txt", classes)


def test_csv_needs_its_header(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("file,class\nv.mp4,a\n")
    with pytest.raises(LayoutError, match=r"l.csv:1: a CSV annotation list needs the header"):
        list_split(tmp_path, "annotation_list", "l.csv")


def test_stratified_split_is_per_class_seeded_and_stable(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name, n in (("a", 10), ("b", 5), ("c", 1)):
        for i in range(n):
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / f"{i}.mp4").write_bytes(b"")
    listing = list_split(root, "video_folder", None)
    train, val = stratified_split(listing, 0.2, seed=0)
    assert Counter(e.label for e in val) == {0: 2, 1: 1}  # a one-video class stays in train
    assert Counter(e.label for e in train) == {0: 8, 1: 4, 2: 1}
    assert stratified_split(listing, 0.2, seed=0) == (train, val)
    assert stratified_split(listing, 0.2, seed=1)[1] != val
    # Adding a video to one class does not reshuffle another class.
    (root / "a" / "new.mp4").write_bytes(b"")
    _, val2 = stratified_split(list_split(root, "video_folder", None), 0.2, seed=0)
    assert [e for e in val2 if e.label == 1] == [e for e in val if e.label == 1]


# --- index -----------------------------------------------------------------------------------

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


# --- broken inputs and the dataset -----------------------------------------------------------

def broken_set(root: Path) -> Path:
    video_set(root, per_class=3)
    kick = root / "train" / "kick"
    write_broken(kick / "empty.mp4", "empty")
    write_broken(kick / "cut.mp4", "truncated")
    write_broken(kick / "cut.mkv", "truncated")
    write_broken(kick / "text.mp4", "not_video")
    write_broken(kick / "sound.mkv", "no_video_stream")
    write_broken(kick / "still.mp4", "single_frame")
    write_test_video(kick / "short.mp4", num_frames=3)
    write_test_video(kick / "odd.mp4", width=33, height=47, pix_fmt="yuv444p", num_frames=10)
    write_test_video(kick / "turned.mp4", rotation=90, num_frames=10)
    return root


def test_broken_videos_are_skipped_with_their_reasons(tmp_path: Path) -> None:
    root = broken_set(tmp_path / "d")
    lines: list[str] = []
    splits = load_dataset(data(root), CLIP, tmp_path / "fb", log=lines.append)
    skipped = {i.path.rsplit("/", 1)[1]: (i.status, i.reason)
               for i in splits.issues if i.action == "skipped"}
    assert {name: status for name, (status, _) in skipped.items() if name != "cut.mp4"} == {
        "empty.mp4": "empty", "text.mp4": "not_video", "sound.mkv": "no_video_stream",
        "still.mp4": "single_frame"}
    assert all(reason for _, reason in skipped.values())
    used = {i.path.rsplit("/", 1)[1]: i for i in splits.issues if i.action == "used"}
    assert used["short.mp4"].status == "padded" and "3 frames, the clip needs 7" in \
        used["short.mp4"].reason
    assert "rotated 90" in used["turned.mp4"].reason
    assert "cut.mp4" in skipped or "truncated" in used["cut.mp4"].reason
    assert "truncated" in used["cut.mkv"].reason
    names = {r.path.name for r in splits.train}
    assert {"odd.mp4", "turned.mp4", "short.mp4", "cut.mkv", "kick0.mp4"} <= names
    assert not names & {"empty.mp4", "text.mp4", "sound.mkv", "still.mp4"}
    turned = next(r for r in splits.train if r.path.name == "turned.mp4")
    assert turned.rotation == 90
    report = summarize(splits)
    assert report[0] == (f"data: 2 classes, {len(splits.train)} training and 6 validation "
                         "videos usable")
    assert "  train/kick/empty.mp4: " + skipped["empty.mp4"][1] in report
    table = splits.issue_table()
    assert set(table) == {"split", "path", "status", "reason", "action"}
    assert len(table["path"]) == len(splits.issues)


def test_short_videos_can_be_skipped_instead_of_padded(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=2)
    write_test_video(root / "train" / "kick" / "short.mp4", num_frames=3)
    splits = load_dataset(data(root, short_videos="skip"), CLIP, tmp_path / "fb",
                          log=lambda _: None)
    (issue,) = splits.issues
    assert (issue.status, issue.action) == ("too_short", "skipped")
    assert "short.mp4" not in {r.path.name for r in splits.train}


def test_a_class_left_without_usable_videos_is_an_error(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=1)
    (root / "train" / "run" / "run0.mp4").write_bytes(b"")
    with pytest.raises(ConfigError, match="class 'run' has no usable video in the train split"):
        load_dataset(data(root), CLIP, tmp_path / "fb", log=lambda _: None)


def test_a_split_without_usable_videos_is_an_error(tmp_path: Path) -> None:
    root = video_set(tmp_path / "d", per_class=1, classes=("kick",))
    (root / "val" / "kick" / "kick0.mp4").write_text("no video")
    with pytest.raises(ConfigError, match="the val split has no usable video"):
        load_dataset(data(root), CLIP, tmp_path / "fb", log=lambda _: None)


def test_stratified_validation_from_a_flat_frame_folder(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("kick", "run"):
        for i in range(5):
            write_frame_folder(root / name / f"v{i}", num_frames=8)
    cfg = Data.model_validate({"format": "frame_folder", "root": str(root),
                               "train_split": None, "val_split": None, "val_fraction": 0.4})
    splits = load_dataset(cfg, CLIP, tmp_path / "fb", log=lambda _: None)
    assert Counter(r.label for r in splits.val) == {0: 2, 1: 2}
    assert Counter(r.label for r in splits.train) == {0: 3, 1: 3}
    assert {r.kind for r in splits.train} == {"frames"}
    assert (root / ".kdsearch" / "all.parquet").is_file()
    again = load_dataset(cfg, CLIP, tmp_path / "fb", log=lambda _: None)
    assert again.fingerprint == splits.fingerprint and again.val == splits.val
    changed = cfg.model_copy(update={"split_seed": 3})
    assert load_dataset(changed, CLIP, tmp_path / "fb",
                        log=lambda _: None).fingerprint != splits.fingerprint


def test_missing_files_in_an_annotation_list_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "ann"
    for name in ("a", "b"):
        write_test_video(root / f"{name}.mp4", num_frames=8)
    (root / "train.txt").write_text("a.mp4 a\nb.mp4 b\ngone.mp4 b\n")
    (root / "val.txt").write_text("a.mp4 a\nb.mp4 b\n")
    cfg = Data.model_validate({"format": "annotation_list", "root": str(root),
                               "train_split": "train.txt", "val_split": "val.txt"})
    splits = load_dataset(cfg, CLIP, tmp_path / "fb", log=lambda _: None)
    (issue,) = splits.issues
    assert (issue.path, issue.status, issue.reason) == ("gone.mp4", "missing", "no such file")
    assert len(splits.train) == 2 and splits.classes == ("a", "b")
