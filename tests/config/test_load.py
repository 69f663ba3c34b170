"""kdsearch.config.load: reading a space file (YAML, --set overrides, paths made absolute,
the files and folders it names, the models it asks for) and the final space file of one
trial. Every problem stops with one line naming the dotted path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kdsearch.config import ConfigError, final_space
from kdsearch.config.load import load_space

from .spaces import DEMO, REPO, problems, write_space


def test_demo_is_valid_and_paths_become_absolute(tmp_path: Path) -> None:
    cfg = load_space(DEMO, cwd=tmp_path)
    assert cfg.data.root == str(tmp_path / "data" / "synthetic-demo")
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cfg.storage == str(tmp_path / "kdsearch_results")
    assert set(cfg.search.space) == {"kd_loss", "alpha", "temperature", "lr", "backbone"}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"search.mode": "min"}, "search.mode: 'min' is wrong for metric val_acc"),
    ({"teacher.model": "resnet9000"}, "teacher.model: 'resnet9000' is not a registered teacher"),
])
def test_unregistered_models_and_a_wrong_mode_name_the_path(
        tmp_path: Path, changes: dict, expected: str) -> None:
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


def test_missing_kinetics_weights_name_the_file_offline(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    teacher = {"teacher.model": "r3d_18", "teacher.weights": "kinetics400"}
    # Downloading allowed: the search fetches the file before it starts.
    assert load_space(write_space(tmp_path, **teacher), cwd=tmp_path).offline is False
    (line,) = problems(write_space(tmp_path, **teacher, offline=True))
    assert line.startswith("teacher.weights: r3d_18 needs its kinetics400 weights in ")
    assert str(tmp_path / "hub") in line and "download https://" in line
    monkeypatch.setenv("KDSEARCH_OFFLINE", "1")
    assert problems(write_space(tmp_path, **teacher)) == [line]
    monkeypatch.setenv("KDSEARCH_OFFLINE", "maybe")
    (line,) = problems(write_space(tmp_path, **teacher))
    assert line.startswith("KDSEARCH_OFFLINE is 'maybe', but must be one of ")


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
    path = write_space(tmp_path, offline=True, **{
        "student.weights": "pretrained", "search.space.backbone": {
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


def test_soccerdb1_space_file_fits_a_frame_folder_set(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.testing.media import write_frame_folder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("KDSEARCH_OFFLINE", "1")  # else missing weights download at run time
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
    # The teacher at its native input; the loss searched, each loss's own settings with it.
    from kdsearch.config import teacher_clip

    assert cfg.teacher.clip is None
    assert teacher_clip(cfg).model_dump() == {"num_frames": 8, "stride": 8, "crop_size": 224}
    assert cfg.search.space["kd_loss"].values == ["kd", "dkd", "dist"]  # type: ignore[union-attr]
    assert cfg.search.space["dkd_beta"].when == {"kd_loss": ["dkd"]}


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


def test_a_value_from_set_says_so(tmp_path: Path) -> None:
    path = write_space(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_space(path, ["search.num_samples=0", "student.epochs=3"], cwd=tmp_path)
    (line,) = info.value.problems
    assert line.startswith("search.num_samples: 0 input should be greater than or equal")
    assert line.endswith("(from --set search.num_samples=0)")


def sampled(alpha: float, temperature: float, lr: float, backbone: str) -> dict[str, Any]:
    return {"alpha": alpha, "temperature": temperature, "lr": lr, "backbone": backbone}


@pytest.fixture(scope="module")
def base_space(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("cwd")
    return load_space(DEMO, cwd=cwd).model_dump(mode="json")


def test_final_space_trains_one_configuration(tmp_path: Path, base_space: dict[str, Any]
                                              ) -> None:
    before = yaml.safe_dump(base_space)
    values = {**sampled(0.3, 4.0, np.float64(0.002), "tiny3d_wide"), "trial_id": "x"}
    space = final_space(base_space, values, experiment="demo-final")
    assert yaml.safe_dump(base_space) == before  # the input is not modified
    assert "trial_id" not in space["student"]
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    cfg = load_space(path, cwd=tmp_path)
    assert (cfg.student.alpha, cfg.student.temperature, cfg.student.lr,
            cfg.student.backbone) == (0.3, 4.0, 0.002, "tiny3d_wide")
    assert cfg.search.space == {} and cfg.search.num_samples == 1
    assert cfg.search.max_concurrent == 1 and cfg.search.scheduler.name == "none"
    assert cfg.experiment.name == "demo-final"
    # The teacher as the search had it: its paths (the pretraining set) stay absolute.
    assert cfg.teacher.model_dump(mode="json") == base_space["teacher"]
    assert final_space(base_space, {})["experiment"] == base_space["experiment"]


@pytest.mark.parametrize(("model", "expected"), [
    ("small3d", (8, 2, 64)), ("x3d_m", (16, 5, 224)), ("slow_r50", (8, 8, 224)),
    ("r3d_18", (16, 2, 112)),
])
def test_the_teacher_clip_defaults_to_the_models_native_input(
        tmp_path: Path, model: str, expected: tuple[int, int, int]) -> None:
    from kdsearch.config import teacher_clip

    cfg = load_space(write_space(tmp_path, **{"teacher.model": model, "teacher.clip": None}),
                     cwd=tmp_path)
    assert cfg.teacher.clip is None
    clip = teacher_clip(cfg)
    assert (clip.num_frames, clip.stride, clip.crop_size) == expected
    given = {"num_frames": 12, "stride": 3, "crop_size": 96}
    cfg = load_space(write_space(tmp_path, **{"teacher.model": model, "teacher.clip": given}),
                     cwd=tmp_path)
    assert teacher_clip(cfg).model_dump() == given


def test_a_teacher_clip_that_its_model_cannot_take_names_the_path(tmp_path: Path) -> None:
    found = problems(write_space(tmp_path, **{
        "teacher.model": "mvit_v2_s", "teacher.clip": {"num_frames": 8, "crop_size": 224}}))
    assert any(p.startswith("teacher.clip: mvit_v2_s takes exactly 16 frames at 224 px")
               for p in found), found
    found = problems(write_space(tmp_path, **{"teacher.clip": {"num_frames": 0}}))
    assert any(p.startswith("teacher.clip.num_frames:") for p in found), found


def test_the_teacher_pretraining_set_resolves_like_data(tmp_path: Path) -> None:
    cfg = load_space(DEMO, cwd=tmp_path)
    assert cfg.teacher.pretrain is not None
    assert cfg.teacher.pretrain.data.root == str(tmp_path / "data" / "synthetic-source")
    found = problems(write_space(tmp_path, **{"teacher.pretrain.epochs": 0,
                                              "teacher.pretrain.data.format": "tapes"}))
    assert any(p.startswith("teacher.pretrain.epochs:") for p in found), found
    assert any(p.startswith("teacher.pretrain.data.format:") for p in found), found
