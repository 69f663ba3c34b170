"""python -m kdsearch.init: a starter space file from a folder of real (small) videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdsearch import init, run
from kdsearch.config import ConfigError, load_space
from kdsearch.data.index import IndexRow
from kdsearch.models import get_spec, weights_path
from kdsearch.testing.media import write_frame_folder, write_test_video
from kdsearch.text import python_command

CLASSES = ["kick", "run"]


@pytest.fixture(autouse=True)
def _cpu_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _videos(folder: Path, per_class: int, frames: list[int]) -> None:
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            n = frames[(c + i) % len(frames)]
            write_test_video(folder / name / f"clip_{i}.mp4", num_frames=n,
                             width=64 + 16 * (i % 2), height=48 + 16 * (i % 2), fps=16)


def _init(*argv: str) -> int:
    return init.main([*argv])


def _fits(cfg_path: Path, shortest: int, short_side: int) -> None:
    clip = load_space(cfg_path).student.clip
    assert (clip.num_frames - 1) * clip.stride + 1 <= shortest
    assert clip.crop_size * 8 / 7 <= short_side
    assert clip.num_frames >= 4 and clip.crop_size >= 32


def test_split_folders_give_a_space_file_that_validates(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    _videos(tmp_path / "mysport" / "train", 2, [20, 40])
    _videos(tmp_path / "mysport" / "val", 1, [24, 40])
    assert _init("mysport") == 0
    out = tmp_path / "space.yaml"
    cfg = load_space(out)
    assert (cfg.data.format, cfg.data.train_split, cfg.data.val_split) == ("video_folder",
                                                                            "train", "val")
    assert cfg.data.classes == CLASSES
    assert cfg.data.root == str((tmp_path / "mysport").resolve())
    assert cfg.teacher.model == "small3d" and cfg.teacher.weights == "none"
    assert cfg.search.num_samples == 12 and cfg.search.scheduler.name == "agreement"
    assert set(cfg.search.space) == {"alpha", "temperature", "lr", "backbone"}
    _fits(out, shortest=20, short_side=48)
    text = out.read_text()
    assert "python -m kdsearch.init mysport --out space.yaml" in text
    assert "#   kick: 2 train, 1 val" in text and "min 20, median" in text
    # The commands to run next name this interpreter, so they work as printed.
    assert f"{python_command()} -m kdsearch.run space.yaml --dry-run" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".space")]  # no temp file
    assert run.main([str(out), "--dry-run"]) == 0
    assert "wrote space.yaml" in capsys.readouterr().out


def test_class_folders_under_the_root_split_off_validation(tmp_path: Path) -> None:
    _videos(tmp_path / "clips", 3, [12, 30, 64])
    assert _init("clips", "--out", "clips.yaml") == 0
    cfg = load_space(tmp_path / "clips.yaml")
    assert (cfg.data.format, cfg.data.train_split, cfg.data.val_split) == ("video_folder",
                                                                            None, None)
    assert cfg.data.classes == CLASSES
    _fits(tmp_path / "clips.yaml", shortest=12, short_side=48)
    assert "class folders directly under the root" in (tmp_path / "clips.yaml").read_text()


def test_frame_folders_are_detected(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for name in CLASSES:
            for i in range(2):
                write_frame_folder(tmp_path / "frames" / split / name / f"v{i}",
                                   num_frames=10 + 6 * i, width=96, height=72)
    assert _init("frames") == 0
    cfg = load_space(tmp_path / "space.yaml")
    assert cfg.data.format == "frame_folder" and cfg.data.classes == CLASSES
    _fits(tmp_path / "space.yaml", shortest=10, short_side=72)
    assert "25 fps (assumed)" in (tmp_path / "space.yaml").read_text()


def test_a_gpu_gets_kinetics_models_and_the_weights_paths(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _videos(tmp_path / "data", 3, [40])
    assert _init("data") == 0
    text = (tmp_path / "space.yaml").read_text()
    names = ["r2plus1d_18", "x3d_xs", "r3d_18", "mc3_18"]
    for name in names:
        assert str(weights_path(get_spec(name))) in text
    # The search downloads missing weights; offline --dry-run names them until they are there.
    assert load_space(tmp_path / "space.yaml").teacher.weights == "kinetics400"
    monkeypatch.setenv("KDSEARCH_OFFLINE", "1")
    with pytest.raises(ConfigError, match="r2plus1d_18-91a641e6.pth"):
        load_space(tmp_path / "space.yaml")
    for name in names:
        path = weights_path(get_spec(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    cfg = load_space(tmp_path / "space.yaml")
    assert (cfg.teacher.model, cfg.teacher.weights) == ("r2plus1d_18", "kinetics400")
    assert cfg.student.weights == "pretrained" and cfg.resources.gpus_per_trial > 0
    _fits(tmp_path / "space.yaml", shortest=40, short_side=48)


def _row(frames: int, fps: float | None, width: int = 320, height: int = 240) -> IndexRow:
    return IndexRow("a/x.mp4", 0, "video", 1, 1, frames, fps, None, width, height, 0, "ok", "")


@pytest.mark.parametrize(("frames", "fps", "expect"), [
    ([300, 600], 30.0, (8, 6)),  # 43 frames: 1.43 s
    ([20, 600], 30.0, (8, 2)),  # the shortest video limits the span
    ([5, 600], 30.0, (5, 1)),  # fewer frames than the teacher's clip
    ([300], None, (8, 5)),  # frame folders: 25 fps assumed
])
def test_the_clip_spans_about_a_second_and_a_half_and_fits(
        frames: list[int], fps: float | None, expect: tuple[int, int]) -> None:
    found = init.Found("video_folder", None, None, ("a",),
                       {".": [_row(n, fps, 320 - i, 240 - i) for i, n in enumerate(frames)]})
    clip = init.choose_clip(found, 8, 112)
    assert (clip["num_frames"], clip["stride"]) == expect
    assert clip["crop_size"] == 112  # 112 x 8/7 = 128 <= 239
    assert init.choose_clip(found, 8, 1000)["crop_size"] == 208  # 239 x 7/8, a multiple of 8


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert _init(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def test_bad_input_is_one_line_exit_2_and_nothing_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["missing"], "DATA_ROOT: ")
    (tmp_path / "empty").mkdir()
    _refused(capsys, ["empty"], "has no class folders")
    (tmp_path / "novideo" / "kick").mkdir(parents=True)
    (tmp_path / "novideo" / "kick" / "notes.txt").write_text("no video here")
    _refused(capsys, ["novideo"], "holds no videos")
    assert not (tmp_path / "space.yaml").exists()
    _videos(tmp_path / "ok", 2, [20])
    (tmp_path / "space.yaml").write_text("mine\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    _refused(capsys, ["ok"], "--out: 'space.yaml' already exists (pass --force")
    assert (tmp_path / "space.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert _init("ok", "--force") == 0
    assert load_space(tmp_path / "space.yaml").data.classes == CLASSES


def test_classes_without_a_usable_video_are_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _videos(tmp_path / "data", 2, [20])
    for clip in (tmp_path / "data" / "run").iterdir():
        clip.write_bytes(b"")
    _refused(capsys, ["data"], "class 'run' has no usable video in the root (empty 2)")
    assert not (tmp_path / "space.yaml").exists()
