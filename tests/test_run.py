"""kdsearch.run: the command line; a bad space file exits 2 with one line per problem and
writes nothing, --dry-run prints the configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from config.spaces import DEMO, write_space

from kdsearch.run import main, print_outcome


def test_cli_exits_2_with_one_line_per_problem_and_writes_nothing(tmp_path: Path) -> None:
    path = write_space(tmp_path, **{"search.num_samples": 0, "student.epochs": 0})
    proc = subprocess.run([sys.executable, "-m", "kdsearch.run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert sorted(lines) == [
        "error: search.num_samples: 0 input should be greater than or equal to 1",
        "error: student.epochs: 0 input should be greater than or equal to 1"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_dry_run_prints_config_and_space(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(DEMO), "--dry-run", "--set", "search.num_samples=5"]) == 0
    out = capsys.readouterr().out
    assert "search space (5 trials):" in out
    assert "backbone       choice ['tiny3d', 'tiny3d_wide', 'tiny_r2plus1d']" in out
    assert "alpha          uniform [0, 0.9]" in out


def test_dry_run_never_downloads_and_offline_needs_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import torch

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("--dry-run must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr("kdsearch.models._download.urlopen", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    path = write_space(tmp_path, **{"teacher.model": "r3d_18", "teacher.weights": "kinetics400"})
    assert main([str(path), "--dry-run"]) == 0  # the search would download the file first
    assert "offline: false" in capsys.readouterr().out
    assert main([str(path), "--dry-run", "--offline"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: teacher.weights: r3d_18 needs its kinetics400 weights in "
                           f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / 'r3d_18-b3b3357e.pth'}")
    assert "download https://download.pytorch.org/models/r3d_18-b3b3357e.pth" in line
    file = tmp_path / "torch" / "hub" / "checkpoints" / "r3d_18-b3b3357e.pth"
    file.parent.mkdir(parents=True)
    file.touch()
    assert main([str(path), "--dry-run", "--offline"]) == 0
    assert "offline: true" in capsys.readouterr().out


def test_the_summary_says_what_the_teacher_added(capsys: pytest.CaptureFixture) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import SearchOutcome
    from kdsearch.track.schema import TrialRow, kd_gain

    cfg = load_space(DEMO)
    best = TrialRow("t1", "run1", "completed", 2, 0.52, {"alpha": 0.5})
    gain = kd_gain([0.50, 0.54, 0.52], [0.45, 0.47, 0.49], metric="val_acc", mode="max",
                   n_val=100)
    outcome = SearchOutcome("1", "parent", [best], best, {"val_acc": 0.6}, 60.0, False,
                            kd_gain=gain)
    print_outcome(outcome, cfg)
    assert ("distillation: +0.050 val_acc over the same student without the teacher (0.520 "
            "against 0.470; SE 0.016 over 3 seeds; validation noise 0.050): helped"
            ) in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("override", "expected"), [
    ("student.epochs=1000000000",
     "error: student.epochs: 1000000000 input should be less than or equal to 10000"),
    ("search.num_samples=1000000000000000000000", "error: search.num_samples: "
     "1000000000000000000000 input should be less than or equal to 100000"),
    ("teacher.cache_views=100000000",
     "error: teacher.cache_views: 100000000 input should be less than or equal to 1000"),
    ("student.clip.crop_size=1000000",
     "error: student.clip.crop_size: 1000000 input should be less than or equal to 1024"),
])
def test_dry_run_rejects_absurd_sizes_with_one_line(
        override: str, expected: str, capsys: pytest.CaptureFixture) -> None:
    assert main([str(DEMO), "--dry-run", "--set", override]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{expected} (from --set {override})"]


def test_a_yaml_alias_bomb_is_one_short_line_in_well_under_a_second(tmp_path: Path) -> None:
    lines = [f"a0: &a0 [{', '.join(['x'] * 9)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "space.yaml"
    path.write_text("\n".join(lines) + "\n" + DEMO.read_text().replace("metric: val_acc",
                                                                        "metric: *a8"))
    code = ("import sys, time; from kdsearch.run import main; t = time.monotonic(); "
            "code = main(sys.argv[1:]); print(time.monotonic() - t); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(path), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and float(proc.stdout) < 0.5, proc.stdout
    assert proc.stderr == (f"error: {path}: invalid YAML: its aliases expand to more than "
                           "100000 values (a space file holds a few hundred)\n")


def demo_cache_bytes(views: int = 8) -> int:
    """The demo's clip cache: 4 classes x 30 training videos x ``views`` student clips of
    3 x 4 x 32 x 32 bytes, 4 x 50 validation clips, float32 logits of 4 classes, 1 MiB."""
    clip = 3 * 4 * 32 * 32
    return (120 * views + 200) * clip + 120 * views * 4 * 4 + (1 << 20)


def test_dry_run_prints_the_cache_estimate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([str(DEMO), "--dry-run", "--set", "teacher.cache_views=5"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.startswith("clip cache:"))
    assert line.startswith(f"clip cache: about 10.4 MiB ({demo_cache_bytes(5)} bytes: 120 "
                           "training videos x 5 views and 200 validation videos x 1 clip, as "
                           f"listed, before probing) in {tmp_path / 'kdsearch_results' / 'cache'};")
    assert main([str(DEMO), "--dry-run", "--set", "teacher.cache=false"]) == 0
    assert "clip cache:" not in capsys.readouterr().out


def test_the_estimate_counts_the_videos_a_folder_layout_lists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for name in ("kick", "run"):
            (tmp_path / "d" / split / name).mkdir(parents=True)
            for i in range(count):
                (tmp_path / "d" / split / name / f"{i}.mp4").touch()  # listed, never probed
    path = write_space(tmp_path, **{"data.format": "video_folder", "data.root": "d"})
    monkeypatch.chdir(tmp_path)
    assert main([str(path), "--dry-run"]) == 0
    assert ("6 training videos x 8 views and 4 validation videos x 1 clip"
            in capsys.readouterr().out)


def test_a_cache_the_disk_cannot_hold_stops_dry_run_and_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import shutil

    free = demo_cache_bytes() - 1
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search must not start")

    monkeypatch.setattr("kdsearch.search.driver.run_search", never)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(DEMO.read_text())
    expected = (f"error: teacher.cache_dir: the clip cache needs about {free + 1} bytes (14.6 "
                f"MiB) but {free} (14.6 MiB) are free on the disk of "
                f"{tmp_path / 'kdsearch_results' / 'cache'}; free space there, set "
                "teacher.cache_dir to a disk with room, or lower teacher.cache_views")
    assert main(["space.yaml", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [expected]
    assert main(["space.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # nothing created
    assert main(["space.yaml", "--dry-run", "--set", "teacher.cache_views=7"]) == 0


def test_a_cache_of_the_same_shape_may_be_reused_on_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import json
    import shutil

    import numpy as np

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "kdsearch_results" / "cache" / "0123456789abcdef"
    folder.mkdir(parents=True)
    np.save(folder / "train_clips.npy", np.zeros((0, 3, 4, 32, 32), np.uint8))
    meta = {"views": 8, "val_clips_per_video": 1, "classes": ["a", "b", "c", "d"],
            "teacher_clip": {"num_frames": 8, "stride": 4, "crop_size": 32}}
    (folder / "meta.json").write_text(json.dumps(meta))
    assert main([str(DEMO), "--dry-run"]) == 0
    assert ("; a cache of the same shape exists (0123456789abcdef) and may be reused"
            in capsys.readouterr().out)
    assert main([str(DEMO), "--dry-run", "--set", "student.clip.crop_size=48"]) == 2
    assert "the clip cache needs about" in capsys.readouterr().err
