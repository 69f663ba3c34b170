"""Limits of the space file: upper bounds on counts and sizes, names used in paths and MLflow
filters, YAML that expands or nests without bound, and messages that quote only a short
excerpt of a huge value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kdsearch.config import ConfigError
from kdsearch.config.load import MAX_NODES, apply_overrides, read_yaml

from .spaces import DEMO, problems, search_problems, write_space


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of nested aliases that expand to ``width ** levels`` strings."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_rejected_at_once_with_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(alias_bomb() + DEMO.read_text().replace("metric: val_acc", "metric: *a8"))
    assert path.stat().st_size < 4096
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert time.monotonic() - start < 0.5
    assert err.value.problems == [f"{path}: invalid YAML: its aliases expand to more than "
                                  f"{MAX_NODES} values (a space file holds a few hundred)"]


def test_aliases_a_real_file_uses_still_work(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(DEMO.read_text().replace("clip: {num_frames: 4, stride: 4, crop_size: 32}",
                                             "clip: &clip {num_frames: 4, stride: 4, "
                                             "crop_size: 32}\n  extra: *clip"))
    assert read_yaml(path)["student"]["extra"] == {"num_frames": 4, "stride": 4,
                                                   "crop_size": 32}


def test_an_alias_bomb_in_set_is_rejected() -> None:
    levels = [f"&a0 [{', '.join(['x'] * 9)}]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError) as err:
        apply_overrides({}, [f"search.metric=[{', '.join(levels)}]"])
    (line,) = err.value.problems
    assert line.startswith("--set search.metric=[&a0 [x") and line.endswith(
        f"...: its aliases expand to more than {MAX_NODES} values (a space file holds a few "
        "hundred)"), line


@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("student: {epochs: " + "1" * 5000 + "}", "a value cannot be read (Exceeds the limit"),
    ("a: &a [*a]", "an alias refers to the value that contains it"),
])
def test_yaml_that_cannot_be_read_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    (line,) = err.value.problems
    assert expected in line and len(line) < 300, line


def test_a_huge_space_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("# " + "x" * (2 << 20))
    assert problems(path) == [f"{path}: {path.stat().st_size} bytes; a space file must be at "
                              f"most {1 << 20} bytes"]


def test_messages_quote_a_short_excerpt_of_huge_values_and_keys(tmp_path: Path) -> None:
    found = problems(write_space(tmp_path, **{"experiment.name": "n" * 100_000,
                                              "search.metric": ["val"] * 50_000,
                                              "k" * 100_000: 1}))
    assert len(found) == 3 and all(len(line) < 400 for line in found), [len(p) for p in found]
    assert any(line.startswith("experiment.name: 'nnnn") for line in found)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"student.epochs": 1_000_000_000},
     "student.epochs: 1000000000 input should be less than or equal to 10000"),
    ({"teacher.epochs": 1_000_000_000},
     "teacher.epochs: 1000000000 input should be less than or equal to 10000"),
    ({"search.num_samples": 10**21},
     "search.num_samples: 1000000000000000000000 input should be less than or equal to 100000"),
    ({"teacher.cache_views": 10**8},
     "teacher.cache_views: 100000000 input should be less than or equal to 1000"),
    ({"student.clip.crop_size": 1_000_000},
     "student.clip.crop_size: 1000000 input should be less than or equal to 1024"),
    ({"student.clip.num_frames": 100_000},
     "student.clip.num_frames: 100000 input should be less than or equal to 512"),
    ({"search.max_concurrent": 10**6},
     "search.max_concurrent: 1000000 input should be less than or equal to 1000"),
    ({"report.kd_seeds": 10**6}, "report.kd_seeds: 1000000 input should be less than or equal "
                                 "to 100"),
    ({"tracking.top_k": 10**6}, "tracking.top_k: 1000000 input should be less than or equal to "
                                "1000"),
    ({"search.seed": 2**64}, "search.seed: 18446744073709551616 input should be less than or "
                             "equal to 4294967295"),
    ({"data.synthetic.train_per_class": 10**9},
     "data.synthetic.train_per_class: 1000000000 input should be less than or equal to 100000"),
])
def test_absurd_counts_and_sizes_are_one_line_naming_the_bound(
        tmp_path: Path, changes: dict, expected: str) -> None:
    assert problems(write_space(tmp_path, **changes)) == [expected]


def test_searched_ranges_keep_within_the_bounds(tmp_path: Path) -> None:
    found = search_problems(tmp_path, space={
        "batch_size": {"type": "int", "low": 1, "high": 100_000},
        "dkd_warmup": {"type": "choice", "values": [0, 10**9]}})
    assert found == ["search.space.batch_size.high: 100000 is outside [1, 4096]",
                     "search.space.dkd_warmup.values[1]: 1000000000 is outside [0, 10000]"]


@pytest.mark.parametrize(("key", "value"), [
    ("experiment.name", ".."),
    ("experiment.name", "."),
    ("experiment.name", ".hidden"),
    ("experiment.name", "a/../b"),
    ("experiment.name", "x" * 101),
    ("tracking.registered_model", "best' or name = 'other"),
    ("tracking.registered_model", "../student"),
    ("search.warm_start", {"experiment": "old' or name != '"}),
])
def test_names_used_in_paths_and_mlflow_filters_follow_the_pattern(
        tmp_path: Path, key: str, value: object) -> None:
    (line,) = problems(write_space(tmp_path, **{key: value}))
    where = "search.warm_start.experiment" if key == "search.warm_start" else key
    assert line.startswith(f"{where}: ") and "letters, digits, '.', '_' or '-', the first a " \
        "letter or digit (it names folders and MLflow queries)" in line, line


def test_names_that_follow_the_pattern_are_kept(tmp_path: Path) -> None:
    from kdsearch.config.load import load_space

    cfg = load_space(write_space(tmp_path, **{
        "experiment.name": "Kinetics_400.v2-" + "x" * 84,
        "tracking.registered_model": "kinetics-student_v1.2"}), cwd=tmp_path)
    assert cfg.experiment.name.endswith("x" * 84)
    assert cfg.tracking.registered_model == "kinetics-student_v1.2"
