"""Every class of bad space file stops with one line naming the dotted path, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsearch.config import ConfigError
from kdsearch.config.load import load_space
from kdsearch.run import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "search_spaces" / "demo.yaml"


def write_space(tmp_path: Path, **changes: object) -> Path:
    """The demo space file with dotted-key changes (None deletes the key)."""
    raw = yaml.safe_load(DEMO.read_text())
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def problems(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_space(path, overrides, cwd=path.parent)
    return info.value.problems


def test_demo_is_valid_and_paths_become_absolute(tmp_path: Path) -> None:
    cfg = load_space(DEMO, cwd=tmp_path)
    assert cfg.data.root == str(tmp_path / "data" / "synthetic-demo")
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cfg.storage == str(tmp_path / "kdsearch_results")
    assert set(cfg.search.space) == {"alpha", "temperature", "lr", "backbone"}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"search.space.alpha": {"type": "uniform", "low": 0.0, "high": 1.5}},
     "search.space.alpha.high: 1.5 is outside [0, 1]"),
    ({"search.space.alpha": {"type": "uniform", "low": 1.5, "high": 2.0}},
     "search.space.alpha.low: 1.5 is outside [0, 1]"),
    ({"search.space.lr": {"type": "loguniform", "low": 0.0, "high": 0.1}},
     "search.space.lr.low: 0.0 must be > 0 for a log scale"),
    ({"search.space.lr": {"type": "uniform", "low": 0.1, "high": 0.01}},
     "search.space.lr.high: 0.01 must be greater than low (0.1)"),
    ({"search.space.backbone": {"type": "choice", "values": ["tiny3d", "resnet9000"]}},
     "search.space.backbone.values[1]: 'resnet9000' is not a registered student"),
    ({"search.space.backbone": {"type": "uniform", "low": 0, "high": 1}},
     "search.space.backbone.type: 'uniform' must be 'choice'"),
    ({"search.space.dropout": {"type": "uniform", "low": 0, "high": 1}},
     "search.space.dropout: unknown setting (searchable: alpha"),
    ({"search.space.alpha": {"type": "gaussian", "low": 0, "high": 1}},
     "search.space.alpha: "),
    ({"search.num_samples": 0}, "search.num_samples: 0 input should be greater than or equal"),
    ({"search.metric": "accuracy"}, "search.metric: 'accuracy' input should be"),
    ({"search.mode": "min"}, "search.mode: 'min' is wrong for metric val_acc"),
    ({"search.bogus": 1}, "search.bogus: unknown key"),
    ({"student.epochs": "ten"}, "student.epochs: 'ten' input should be a valid integer"),
    ({"student.alpha": 2}, "student.alpha: 2 input should be less than or equal to 1"),
    ({"teacher.model": "resnet9000"}, "teacher.model: 'resnet9000' is not a registered teacher"),
    ({"teacher": None}, "teacher: missing (required)"),
    ({"data.format": "hdf5"}, "data.format: 'hdf5' input should be"),
    ({"data.synthetic.size": 33}, "data.synthetic.size: 33 must be even"),
    ({"experiment.name": "a b"}, "experiment.name: 'a b' string should match pattern"),
    ({"resources.gpus_per_trial": -1}, "resources.gpus_per_trial: -1 input should be greater"),
    ({"search.scheduler": {"name": "asha", "reduction_factor": 1}},
     "search.scheduler.reduction_factor: 1 input should be greater than or equal to 2"),
])
def test_bad_values_name_the_path(tmp_path: Path, changes: dict, expected: str) -> None:
    found = problems(write_space(tmp_path, **changes))
    assert any(p.startswith(expected) for p in found), found


def test_paths_that_must_exist(tmp_path: Path) -> None:
    path = write_space(tmp_path, **{"data.format": "video_folder", "data.root": "missing",
                                    "teacher.weights": "nowhere/teacher.pt"})
    found = problems(path)
    assert f"data.root: '{tmp_path / 'missing'}' is not a directory" in found
    assert f"teacher.weights: '{tmp_path / 'nowhere' / 'teacher.pt'}' is not a file" in found


def test_video_folder_splits_are_checked(tmp_path: Path) -> None:
    (tmp_path / "videos" / "train" / "kick").mkdir(parents=True)
    (tmp_path / "videos" / "train" / "kick" / "a.mp4").write_bytes(b"")
    path = write_space(tmp_path, **{"data.format": "video_folder", "data.root": "videos"})
    (line,) = problems(path)
    assert line.startswith(f"data.val_split: split folder {tmp_path / 'videos' / 'val'} does "
                           "not exist")


def test_missing_kinetics_weights_name_the_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path = write_space(tmp_path, **{"teacher.model": "r3d_18", "teacher.weights": "kinetics400"})
    (line,) = problems(path)
    assert line.startswith("teacher.weights: r3d_18 needs its kinetics400 weights in ")
    assert str(tmp_path / "hub") in line and "download https://" in line


@pytest.mark.parametrize(("changes", "expected"), [
    ({"data.format": "annotation_list", "data.root": "d", "data.train_split": "null"},
     "data.train_split: must name the training list file for format annotation_list"),
    ({"data.format": "frame_folder", "data.root": "d", "data.train_split": "null"},
     "data.val_split: must be null when train_split is null"),
    ({"data.format": "frame_folder", "data.root": "d", "data.classes": ["a", "a"]},
     "data.classes: ['a', 'a'] repeats a; class names must be unique"),
    ({"data.val_fraction": 1.0}, "data.val_fraction: 1.0 input should be less than 1"),
    ({"data.short_videos": "loop"}, "data.short_videos: 'loop' input should be 'pad' or 'skip'"),
    ({"data.format": "frames"}, "data.format: 'frames' input should be"),
])
def test_bad_data_sections(tmp_path: Path, changes: dict, expected: str) -> None:
    (tmp_path / "d").mkdir()
    nulls = tuple(f"{k}=null" for k, v in changes.items() if v == "null")  # None deletes
    found = problems(write_space(tmp_path, **changes), nulls)
    assert any(p.startswith(expected) for p in found), found


def test_annotation_list_problems_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.txt").write_text("a.mp4 kick\nb.mp4\n")
    path = write_space(tmp_path, **{"data.format": "annotation_list", "data.root": "d",
                                    "data.train_split": "train.txt", "data.val_split": None})
    assert problems(path) == [f"data.train_split: {tmp_path / 'd' / 'train.txt'}:2: expected "
                              "'path label', got 'b.mp4'"]


def test_vote_metric_needs_frame_level_students(tmp_path: Path) -> None:
    path = write_space(tmp_path, **{"search.metric": "val_vote_acc"})
    (line,) = problems(path)
    assert line.startswith("search.metric: val_vote_acc needs frame-level students, but tiny3d")
    assert "(frame-level: resnet18_tsn)" in line


def test_every_searched_backbone_needs_its_pretrained_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path = write_space(tmp_path, **{"student.weights": "pretrained", "search.space.backbone": {
        "type": "choice", "values": ["tiny3d", "x3d_xs", "resnet18_tsn"]}})
    found = problems(path)
    assert found[0] == ("student.weights: 'pretrained' but tiny3d has no pretrained weights; "
                        "use none")
    assert found[1].startswith("student.weights: x3d_xs needs its kinetics400 weights in ")
    assert found[2].startswith("student.weights: resnet18_tsn needs its imagenet weights in ")


def test_pretrained_kind_must_exist_for_the_model(tmp_path: Path) -> None:
    path = write_space(tmp_path, **{"teacher.weights": "kinetics400"})
    assert problems(path) == ["teacher.weights: 'kinetics400' is not available for small3d "
                              "(available: none)"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("experiment:\n  name: x\ndata: [unclosed\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}:4:") and "invalid YAML" in line


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    cfg = load_space(DEMO, ["search.num_samples=3", "student.clip.crop_size=32"], cwd=tmp_path)
    assert cfg.search.num_samples == 3 and cfg.student.clip.crop_size == 32
    assert problems(DEMO, ("search.space.alpha.low=-1",))[0].startswith(
        "search.space.alpha.low: -1.0 is outside [0, 1]")
    assert problems(DEMO, ("novalue",)) == ["--set novalue: expected dotted.key=value"]


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


def test_soccerdb1_space_file_fits_a_frame_folder_set(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.testing.media import write_frame_folder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    space = REPO / "search_spaces" / "soccerdb1.yaml"
    with pytest.raises(ConfigError) as info:
        load_space(space, cwd=tmp_path)
    found = info.value.problems
    assert found[0] == f"data.root: '{tmp_path / 'data/SoccerDB1/images'}' is not a directory"
    # Every pretrained file it needs is named, teacher and both searched students.
    assert [p.split(" needs ")[0] for p in found[1:]] == [
        "teacher.weights: slow_r50", "student.weights: resnet18_tsn", "student.weights: x3d_xs"]
    for split in ("train", "val"):
        for name in ("dribble", "kick", "run", "walk"):
            write_frame_folder(tmp_path / "data/SoccerDB1/images" / split / name / "v1",
                               num_frames=4)
    cfg = load_space(space, ["teacher.weights=none", "student.weights=none"], cwd=tmp_path)
    assert cfg.data.format == "frame_folder" and cfg.resources.gpus_per_trial == 1
    assert cfg.search.space["backbone"].values == ["resnet18_tsn", "x3d_xs"]  # type: ignore[union-attr]


def test_ucf101_space_file_reads_index_labels(tmp_path: Path) -> None:
    from kdsearch.data.dataset import list_splits

    space = REPO / "search_spaces" / "ucf101.yaml"
    videos = tmp_path / "data/ucf101/videos"
    (videos / "YoYo").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / f"data/ucf101/ucf101_{split}_split_1_videos.txt").write_text(
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0\nYoYo/v_YoYo_g01_c01.avi 100\n")
    cfg = load_space(space, ["teacher.weights=none", "student.weights=none"], cwd=tmp_path)
    train, val = list_splits(cfg.data)
    assert len(train.classes) == 101 and val is not None
    assert [(e.path, train.classes[e.label]) for e in train.entries] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup"),
        ("YoYo/v_YoYo_g01_c01.avi", "YoYo")]
