"""Tests for kdsearch.data: the synthetic set, folder scanning, clip decoding, the clip dataset.

Seeking, probing, frame folders and broken media are in test_decode.py.
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdsearch.data import (
    SYNTHETIC_CLASSES,
    DecodeError,
    VideoClipDataset,
    VideoRecord,
    clip_indices,
    generate_synthetic,
    read_video_frames,
    write_video,
)
from kdsearch.data import probe as probe_module
from kdsearch.data import synthetic as synthetic_module
from kdsearch.data.layouts import list_split

SMALL = {"train_per_class": 2, "val_per_class": 1, "num_frames": 12, "size": 32}
# Decoded grey levels may be off by a little: RGB -> limited-range YUV -> RGB rounds.
CODEC_TOLERANCE = 3


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _write_ramp(path: Path, num_frames: int, size: int = 32, codec: str | None = None) -> Path:
    """A grey video whose frame i has the value 8 * i everywhere."""
    levels = np.arange(num_frames, dtype=np.uint8) * 8
    write_video(path, np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3))
                .copy(), fps=8, codec=codec)
    return path


def _levels(clip: np.ndarray) -> np.ndarray:
    return clip.reshape(len(clip), -1).mean(axis=1)


def _videos(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/*.mp4"))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "set", train_per_class=12,
                              val_per_class=2, num_frames=32, size=64)


# --- generate_synthetic -----------------------------------------------------------------------

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


def test_generate_reuses_an_identical_set(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "set", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    started = time.perf_counter()
    generate_synthetic(tmp_path / "set", **SMALL)
    assert time.perf_counter() - started < 1.0
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


# --- read_video_frames on the synthetic writer's videos (more in test_decode.py) --------------

def test_read_takes_strided_frames_and_pads_with_the_last(tmp_path: Path) -> None:
    path = _write_ramp(tmp_path / "ramp.mp4", 10)
    clip = read_video_frames(path, clip_indices(10, start=1, num_frames=6, stride=2))
    assert clip.dtype == np.uint8 and clip.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(_levels(clip), [8, 24, 40, 56, 72, 72], atol=CODEC_TOLERANCE)


def test_read_past_the_end_repeats_the_last_frame(tmp_path: Path) -> None:
    path = _write_ramp(tmp_path / "ramp.mp4", 10)
    np.testing.assert_allclose(_levels(read_video_frames(path, [8, 20, 21])), [64, 72, 72],
                               atol=CODEC_TOLERANCE)
    with pytest.raises(DecodeError, match=r"ramp\.mp4: none of frames 20\.\.22 decodes "
                                          r"\(the video ends at frame 9\)"):
        read_video_frames(path, [20, 21, 22])


def test_read_the_mpeg4_fallback(tmp_path: Path) -> None:
    path = _write_ramp(tmp_path / "ramp.avi", 10, codec="mpeg4")
    np.testing.assert_allclose(_levels(read_video_frames(path, [0, 3, 6, 9])), [0, 24, 48, 72],
                               atol=CODEC_TOLERANCE)


@pytest.mark.parametrize(("start", "num_frames", "stride"), [(-1, 4, 1), (0, 0, 1), (0, 4, 0)])
def test_clip_indices_rejects_bad_arguments(start: int, num_frames: int, stride: int) -> None:
    with pytest.raises(ValueError, match="clip of video_frames="):
        clip_indices(10, start, num_frames, stride)


def test_probe_counts_frames_from_the_container_and_from_the_duration(tmp_path: Path) -> None:
    mp4 = _write_ramp(tmp_path / "ramp.mp4", 10)
    mkv = _write_ramp(tmp_path / "ramp.mkv", 7)
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no count: duration
    assert probe_module.probe_video(mp4).num_frames == 10
    assert probe_module.probe_video(mkv).num_frames == 7


# --- scan_video_folder ---------------------------------------------------------------------

def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


@pytest.fixture()
def ramps(tmp_path: Path) -> list[VideoRecord]:
    """Two 32-frame grey ramps (labels 0 and 1) and a 5-frame one (label 2), all 32x32."""
    return [VideoRecord(_write_ramp(tmp_path / f"{label}.mp4", frames), label)
            for label, frames in enumerate((32, 32, 5))]


def _unnormalise(clip: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> torch.Tensor:
    return clip * torch.tensor(std).view(3, 1, 1, 1) + torch.tensor(mean).view(3, 1, 1, 1)


def test_dataset_evaluation_clips_are_spread_and_normalised(ramps: list[VideoRecord]) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dataset = VideoClipDataset(ramps, num_frames=4, stride=2, crop_size=28, train=False,
                               clips_per_video=3, mean=mean, std=std)
    assert len(dataset) == 9
    starts = []
    for index in range(3, 6):
        clip, label, video = dataset[index]
        assert clip.dtype == torch.float32 and clip.shape == (3, 4, 28, 28)
        assert (label, video) == (1, 1)
        levels = _unnormalise(clip, mean, std).mean(dim=(0, 2, 3)) * 255
        np.testing.assert_allclose(np.diff(levels.numpy()), [16] * 3, atol=CODEC_TOLERANCE)
        starts.append(round(float(levels[0]) / 8))
    # 32 frames and a 7-frame span leave starts 0..25, split into three even segments.
    assert starts == [4, 12, 20]


def test_dataset_pads_short_videos(ramps: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(ramps, num_frames=4, stride=2, crop_size=28, train=True,
                               mean=(0, 0, 0), std=(1, 1, 1))
    clip, label, video = dataset[2]
    assert (label, video) == (2, 2)
    np.testing.assert_allclose(clip.mean(dim=(0, 2, 3)).numpy() * 255, [0, 16, 32, 32],
                               atol=CODEC_TOLERANCE)


def _records(root: Path, split: str) -> list[VideoRecord]:
    listing = list_split(root, "video_folder", split)
    return [VideoRecord(root / e.path, e.label) for e in listing.entries]


def test_dataset_training_is_random_but_seedable(synthetic_root: Path) -> None:
    records = _records(synthetic_root, "train")
    dataset = VideoClipDataset(records[:2], num_frames=8, stride=2, crop_size=48, train=True)
    assert len(dataset) == 2
    torch.manual_seed(0)
    first = [dataset[0][0] for _ in range(4)]
    torch.manual_seed(0)
    again = [dataset[0][0] for _ in range(4)]
    assert first[0].shape == (3, 8, 48, 48)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(first[0], clip) for clip in first[1:])


def test_dataset_evaluation_is_deterministic(synthetic_root: Path) -> None:
    records = _records(synthetic_root, "val")
    dataset = VideoClipDataset(records, num_frames=8, stride=2, crop_size=56, train=False,
                               clips_per_video=2)
    assert len(dataset) == 2 * len(records)
    assert torch.equal(dataset[3][0], dataset[3][0])
    assert dataset[3][2] == 1
    with pytest.raises(IndexError, match="out of range"):
        dataset[len(dataset)]


def test_dataset_counts_frames_once_and_survives_pickling(
        ramps: list[VideoRecord], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    probe_video = probe_module.probe_video

    def counting(path: Path) -> probe_module.MediaInfo:
        calls.append(path)
        return probe_video(path)

    monkeypatch.setattr(probe_module, "probe_video", counting)
    dataset = VideoClipDataset(ramps, num_frames=4, stride=2, crop_size=28, train=False)
    clip = dataset[0][0]
    assert torch.equal(dataset[0][0], clip)
    assert calls == [ramps[0].path]
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[0][0], clip)


def test_dataset_in_a_dataloader(ramps: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(ramps, num_frames=4, stride=2, crop_size=16, train=True)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=0))
    clips, labels, videos = batches[0]
    assert clips.shape == (2, 3, 4, 16, 16)
    assert labels.tolist() == [0, 1] and videos.tolist() == [0, 1]
    assert sum(len(batch[1]) for batch in batches) == 3


def test_uint8_clips_become_the_float_clips_on_the_device(ramps: list[VideoRecord]) -> None:
    from kdsearch.train.loop import to_model_input

    shape = {"num_frames": 4, "stride": 2, "crop_size": 16, "train": False}
    raw = VideoClipDataset(ramps, **shape, uint8=True)[1][0]
    floats = VideoClipDataset(ramps, **shape, mean=(0, 0, 0), std=(1, 1, 1))[1][0]
    assert raw.dtype == torch.uint8 and raw.shape == floats.shape == (3, 4, 16, 16)
    converted = to_model_input(raw[None], torch.device("cpu"))[0]
    assert converted.dtype == torch.float32
    assert torch.allclose(converted, floats, atol=1e-6)


@pytest.mark.parametrize(("name", "value"), [("num_frames", 0), ("stride", 0), ("crop_size", 0),
                                             ("clips_per_video", 0)])
def test_dataset_rejects_bad_arguments(ramps: list[VideoRecord], name: str, value: int) -> None:
    sizes = {"num_frames": 4, "stride": 2, "crop_size": 16, "clips_per_video": 1, name: value}
    with pytest.raises(ValueError, match=rf"`{name}` is {value}, but must be `{name} >= 1`"):
        VideoClipDataset(ramps, num_frames=sizes["num_frames"], stride=sizes["stride"],
                         crop_size=sizes["crop_size"], clips_per_video=sizes["clips_per_video"],
                         train=False)


def test_dataset_rejects_empty_records_and_bad_statistics(ramps: list[VideoRecord]) -> None:
    with pytest.raises(ValueError, match="`records` is empty"):
        VideoClipDataset([], num_frames=4, stride=2, crop_size=16, train=False)
    with pytest.raises(ValueError, match="std > 0"):
        VideoClipDataset(ramps, num_frames=4, stride=2, crop_size=16, train=False,
                         std=(0.2, 0.0, 0.2))
