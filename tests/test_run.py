"""kdsearch.run: the command line; a bad space file exits 2 with one line per problem and
writes nothing, --dry-run prints the configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from config.spaces import DEMO, write_space

from kdsearch.run import main


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
