"""kdsearch.data.layouts: which files make up a split, their labels, stratified splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kdsearch.data.layouts import LayoutError, list_split, stratified_split
from kdsearch.testing.media import write_frame_folder, write_test_video

from .helpers import frame_set, video_set


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

