"""kdsearch.data.synthetic: the synthetic action set, generated once and reproducibly."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from kdsearch.data import SYNTHETIC_CLASSES, generate_synthetic
from kdsearch.data import synthetic as synthetic_module

SMALL = {"train_per_class": 2, "val_per_class": 1, "num_frames": 12, "size": 32}


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _videos(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.mp4"))


def test_generate_writes_layout_and_decodable_videos(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "set", **SMALL)
    assert root == tmp_path / "set"
    assert (root / "synthetic.json").is_file()
    for split, count in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(SYNTHETIC_CLASSES)
        for action in SYNTHETIC_CLASSES:
            videos = sorted((root / split / action).iterdir())
            assert len(videos) == count
            assert _decode(videos[0]).shape == (12, 32, 32, 3)
    # Nothing is left beside the root by the build-then-rename.
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_generate_is_deterministic_in_seed(tmp_path: Path) -> None:
    first = generate_synthetic(tmp_path / "a", **SMALL, seed=3)
    again = generate_synthetic(tmp_path / "b", **SMALL, seed=3)
    other = generate_synthetic(tmp_path / "c", **SMALL, seed=4)
    for path_a, path_b, path_c in zip(_videos(first), _videos(again), _videos(other),
                                      strict=True):
        assert np.array_equal(_decode(path_a), _decode(path_b))
        assert not np.array_equal(_decode(path_a), _decode(path_c))


def test_generate_does_not_depend_on_how_many_videos(tmp_path: Path) -> None:
    fewer = generate_synthetic(tmp_path / "a", **{**SMALL, "train_per_class": 1})
    more = generate_synthetic(tmp_path / "b", **SMALL)
    video = Path("train/run/run_0000.mp4")
    assert np.array_equal(_decode(fewer / video), _decode(more / video))


def test_generate_reuses_an_identical_set(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = generate_synthetic(tmp_path / "set", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def no_writing(*args: object, **kwargs: object) -> None:
        raise AssertionError("an identical set was generated again")

    monkeypatch.setattr(synthetic_module, "write_video", no_writing)
    assert generate_synthetic(tmp_path / "set", **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_generate_replaces_a_synthetic_set_with_other_parameters(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = generate_synthetic(tmp_path / "set", **SMALL)
    with caplog.at_level(logging.INFO, logger="kdsearch.data.synthetic"):
        generate_synthetic(root, **{**SMALL, "train_per_class": 3})
    assert "train_per_class 2 -> 3" in caplog.text
    assert len(list((root / "train" / "kick").iterdir())) == 3
    assert '"train_per_class": 3' in (root / "synthetic.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_generate_fills_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    generate_synthetic(tmp_path / "set", **SMALL)
    assert (tmp_path / "set" / "synthetic.json").is_file()


def test_generate_refuses_a_folder_that_is_not_a_synthetic_set(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"mine is not empty and has no synthetic\.json"):
        generate_synthetic(tmp_path / "mine", **SMALL)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_generate_refuses_an_unreadable_marker(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "synthetic.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"synthetic\.json is unreadable"):
        generate_synthetic(tmp_path / "set", **SMALL)


def test_interrupted_generation_leaves_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []

    def failing_write(path: Path, frames: np.ndarray, fps: int, codec: str | None = None) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(path)

    monkeypatch.setattr(synthetic_module, "write_video", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "set", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "value", "rule"), [
    ("train_per_class", 0, "train_per_class >= 1"),
    ("val_per_class", 0, "val_per_class >= 1"),
    ("num_frames", 1, "num_frames >= 2"),
    ("size", 8, "size >= 16"),
    ("size", 33, "must be even"),
    ("fps", 0, "fps >= 1"),
])
def test_generate_rejects_bad_parameters(tmp_path: Path, name: str, value: int,
                                         rule: str) -> None:
    with pytest.raises(ValueError, match=rf"`{name}` is {value}, but .*{rule}"):
        generate_synthetic(tmp_path / "set", **{**SMALL, name: value})
    assert not (tmp_path / "set").exists()


def _f_statistic(groups: list[np.ndarray]) -> float:
    """One-way ANOVA F: spread of the class means relative to the spread within classes."""
    values = np.concatenate(groups)
    between = sum(len(g) * (g.mean() - values.mean()) ** 2 for g in groups) / (len(groups) - 1)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (len(values) - len(groups))
    return float(between / within)


def _per_video_statistics(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per class, per video: frame mean per channel, frame contrast, mean frame difference."""
    stats: dict[str, dict[str, list[float]]] = {}
    for path in sorted((root / "train").glob("*/*.mp4")):
        frames = _decode(path).astype(np.float32) / 255
        per_class = stats.setdefault(path.parent.name, {})
        for channel, name in enumerate("rgb"):
            per_class.setdefault(name, []).append(float(frames[..., channel].mean()))
        per_class.setdefault("contrast", []).append(float(frames.std(axis=(1, 2, 3)).mean()))
        motion = np.abs(np.diff(frames, axis=0)).mean()
        per_class.setdefault("motion", []).append(float(motion))
    return {action: {k: np.array(v) for k, v in s.items()} for action, s in stats.items()}


def test_classes_differ_in_motion_but_not_in_single_frames(synthetic_root: Path) -> None:
    stats = _per_video_statistics(synthetic_root)
    assert sorted(stats) == sorted(SYNTHETIC_CLASSES)
    # 6.5 is about the 99.9% quantile of F(3, 44): 4 classes of 12 videos that share one
    # distribution stay below it, while a real class effect of the size of the motion one
    # (F in the hundreds) is far above it.
    for name in ("r", "g", "b", "contrast"):
        assert _f_statistic([s[name] for s in stats.values()]) < 6.5, name
    assert _f_statistic([s["motion"] for s in stats.values()]) > 50
    assert stats["run"]["motion"].mean() > 1.5 * stats["walk"]["motion"].mean()
    assert stats["kick"]["motion"].mean() < stats["walk"]["motion"].mean()


def test_generation_says_what_it_writes_and_when_it_is_done(tmp_path: Path) -> None:
    said: list[str] = []
    root = generate_synthetic(tmp_path / "set", **SMALL, log=said.append)
    total = len(list(root.rglob("*.mp4")))
    assert said[0] == (f"generating the synthetic set in {root}: {total} videos of "
                       f"{SMALL['size']}x{SMALL['size']}, {SMALL['num_frames']} frames (once; "
                       "later runs reuse it)")
    assert said[-1].startswith(f"generating the synthetic set: {total} videos written in ")
    said.clear()
    generate_synthetic(tmp_path / "set", **SMALL, log=said.append)
    assert said == []  # reused: nothing to say
