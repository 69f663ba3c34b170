"""kdsearch.run: the command line; a bad space file exits 2 with one line per problem and
writes nothing, --dry-run prints the configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
