"""kdsearch.data.dataset: usable videos and splits from the space file's data section, and
the handling of broken videos."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kdsearch.config import Clip, ConfigError, Data
from kdsearch.data.dataset import load_dataset, summarize
from kdsearch.testing.media import write_broken, write_frame_folder, write_test_video

from .helpers import data, video_set

CLIP = Clip(num_frames=4, stride=2, crop_size=32)  # needs 7 frames


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
