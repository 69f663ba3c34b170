"""kdsearch.data.video: the clip dataset (VideoClipDataset) on videos and frame folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdsearch.data import DecodeError, VideoClipDataset, VideoRecord
from kdsearch.data import probe as probe_module
from kdsearch.data import video as video_module
from kdsearch.data.layouts import list_split
from kdsearch.testing.media import write_broken, write_frame_folder, write_test_video

from .helpers import CODEC_TOLERANCE, numbers, write_ramp


@pytest.fixture()
def ramps(tmp_path: Path) -> list[VideoRecord]:
    """Two 32-frame grey ramps (labels 0 and 1) and a 5-frame one (label 2), all 32x32."""
    return [VideoRecord(write_ramp(tmp_path / f"{label}.mp4", frames), label)
            for label, frames in enumerate((32, 32, 5))]


@pytest.fixture(scope="module")
def records(media: Path) -> list[VideoRecord]:
    """A 20-frame video, its frame folder, a 3-frame video (with no count: probed) and a
    20-frame video turned 90 degrees, labels 0..3."""
    return [
        VideoRecord(write_test_video(media / "ds-long.mp4", num_frames=20, gop=5), 0, 20),
        VideoRecord(write_frame_folder(media / "ds-frames", num_frames=20), 1, 20, "frames"),
        VideoRecord(write_test_video(media / "ds-short.mkv", num_frames=3), 2),
        VideoRecord(write_test_video(media / "ds-turned.mov", num_frames=20, rotation=90,
                                     codec="mpeg4"), 3, 20, rotation=90),
    ]


def _unnormalise(clip: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> torch.Tensor:
    return clip * torch.tensor(std).view(3, 1, 1, 1) + torch.tensor(mean).view(3, 1, 1, 1)


def _clip_numbers(clip: torch.Tensor, num_frames: int) -> list[int]:
    # mean 0 and std 1 keep values in [0, 1]: back to uint8 images.
    frames = (clip.permute(1, 2, 3, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return numbers(frames, num_frames)


def _records(root: Path, split: str) -> list[VideoRecord]:
    listing = list_split(root, "video_folder", split)
    return [VideoRecord(root / e.path, e.label) for e in listing.entries]


# --- items -----------------------------------------------------------------------------------

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


def test_dataset_items_for_videos_and_frame_folders(records: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(records, num_frames=4, stride=3, crop_size=40, train=False,
                               clips_per_video=2, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(dataset) == 8
    # 20 frames, a 10-frame span: starts 0..10 in two segments -> 2 and 7.
    expected = {0: [2, 5, 8, 11], 1: [7, 10, 13, 16], 2: [2, 5, 8, 11], 3: [7, 10, 13, 16],
                4: [0, 2, 2, 2], 5: [0, 2, 2, 2], 6: [2, 5, 8, 11], 7: [7, 10, 13, 16]}
    for index, expected_numbers in expected.items():
        clip, label, video = dataset[index]
        assert clip.shape == (3, 4, 40, 40) and clip.dtype == torch.float32
        assert (label, video) == (index // 2, index // 2)
        count = 3 if video == 2 else 20
        # A 40-pixel centre crop of the 64x48 frame resized to short side 46 keeps the marker
        # (the top-left third) inside it.
        assert _clip_numbers(clip, count) == expected_numbers, index


def test_dataset_clip_takes_a_given_start(records: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(records, num_frames=3, stride=4, crop_size=40, train=True,
                               mean=(0, 0, 0), std=(1, 1, 1))
    assert _clip_numbers(dataset.clip(1, 9, None), 20) == [9, 13, 17]
    assert _clip_numbers(dataset.clip(0, 15, None), 20) == [15, 19, 19]


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
    # Under other global seeds (which change every training clip, above), the same clip.
    torch.manual_seed(0)
    first = dataset[3][0]
    torch.manual_seed(1)
    assert torch.equal(dataset[3][0], first)
    assert dataset[3][2] == 1
    with pytest.raises(IndexError, match="out of range"):
        dataset[len(dataset)]


def test_uint8_clips_become_the_float_clips_on_the_device(ramps: list[VideoRecord]) -> None:
    from kdsearch.train.loop import to_model_input

    shape = {"num_frames": 4, "stride": 2, "crop_size": 16, "train": False}
    raw = VideoClipDataset(ramps, **shape, uint8=True)[1][0]
    floats = VideoClipDataset(ramps, **shape, mean=(0, 0, 0), std=(1, 1, 1))[1][0]
    assert raw.dtype == torch.uint8 and raw.shape == floats.shape == (3, 4, 16, 16)
    converted = to_model_input(raw[None], torch.device("cpu"))[0]
    assert converted.dtype == torch.float32
    assert torch.allclose(converted, floats, atol=1e-6)


# --- probing, pickling and DataLoaders -------------------------------------------------------

def test_dataset_probes_a_record_without_a_count_once(
        records: list[VideoRecord], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    probe_video = probe_module.probe_video

    def counting(path: Path) -> probe_module.MediaInfo:
        calls.append(path)
        return probe_video(path)

    monkeypatch.setattr(probe_module, "probe_video", counting)
    dataset = VideoClipDataset(records, num_frames=2, stride=1, crop_size=32, train=False)
    for index in range(len(dataset)):
        dataset[index]
        dataset[index]
    # Only the record without a count is probed, once; the others' counts are used as given.
    assert calls == [records[2].path]
    # A copy (as a DataLoader worker gets) reads the same clips.
    clip = dataset[2][0]
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[2][0], clip)


def test_dataset_in_a_dataloader(ramps: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(ramps, num_frames=4, stride=2, crop_size=16, train=True)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=0))
    clips, labels, videos = batches[0]
    assert clips.shape == (2, 3, 4, 16, 16)
    assert labels.tolist() == [0, 1] and videos.tolist() == [0, 1]
    assert sum(len(batch[1]) for batch in batches) == 3


def test_dataset_training_items_and_a_dataloader(records: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(records, num_frames=4, stride=2, crop_size=32, train=True)
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=2, num_workers=0)
    clips, labels, videos = next(iter(loader))
    assert clips.shape == (2, 3, 4, 32, 32)
    assert labels.tolist() == [0, 1] and videos.tolist() == [0, 1]
    assert pickle.loads(pickle.dumps(dataset)).records == records


# --- broken clips ----------------------------------------------------------------------------

def test_dataset_retries_a_broken_clip_from_the_start(
        records: list[VideoRecord], monkeypatch: pytest.MonkeyPatch) -> None:

    starts: list[int] = []
    read = video_module.read_video_frames

    def failing_late(path: Path, indices: list[int], **kwargs: int) -> np.ndarray:
        starts.append(indices[0])
        if indices[0] > 0:
            raise DecodeError(f"video {path}: broken packet")
        return read(path, indices, **kwargs)

    monkeypatch.setattr(video_module, "read_video_frames", failing_late)
    dataset = VideoClipDataset(records, num_frames=2, stride=1, crop_size=32, train=False,
                               mean=(0, 0, 0), std=(1, 1, 1))
    assert _clip_numbers(dataset[0][0], 20) == [0, 1]
    assert starts == [9, 0]


def test_dataset_names_the_file_it_cannot_decode(media: Path) -> None:
    broken = write_broken(media / "ds-cut.mp4", "truncated")
    dataset = VideoClipDataset([VideoRecord(broken, 0, num_frames=64)], num_frames=4,
                               stride=2, crop_size=32, train=True)
    with pytest.raises(DecodeError, match=r"video .*ds-cut\.mp4: the clip from frame 10 .* "
                                          r"retry from frame 0 .*do not decode"):
        dataset.clip(0, 10, None)
    unprobed = VideoClipDataset([VideoRecord(broken, 0)], num_frames=4, stride=2,
                                crop_size=32, train=True)
    with pytest.raises(DecodeError, match=r"video .*ds-cut\.mp4 is unusable: broken container"):
        unprobed[0]


def test_dataset_names_the_frame_folder_it_cannot_read(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "junk", num_frames=6)
    for path in folder.iterdir():
        path.write_bytes(b"junk")
    dataset = VideoClipDataset([VideoRecord(folder, 0, 6, "frames")], num_frames=2, stride=1,
                               crop_size=32, train=False)
    with pytest.raises(DecodeError, match=r"frame folder .*junk: the clip from frame 2 .*"
                                          r"img_00003\.jpg: .*retry from frame 0"):
        dataset[0]
    (tmp_path / "empty").mkdir()
    unprobed = VideoClipDataset([VideoRecord(tmp_path / "empty", 0, kind="frames")],
                                num_frames=2, stride=1, crop_size=32, train=False)
    with pytest.raises(DecodeError, match=r"frame folder .*empty is unusable: no image files"):
        unprobed[0]


# --- arguments -------------------------------------------------------------------------------

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


# --- paired student and teacher clips ----------------------------------------------------------

def _gradient_video(path: Path, num_frames: int = 40, size: int = 64) -> Path:
    """Frame i: blue 6 * i everywhere (time), red rising left to right and green top to
    bottom (position), so a clip shows which frames and which box it came from."""
    from kdsearch.data import write_video

    ramp = np.linspace(0, 255, size).astype(np.uint8)
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    frames[..., 0] = ramp[None, None, :]
    frames[..., 1] = ramp[None, :, None]
    frames[..., 2] = (np.arange(num_frames, dtype=np.uint8) * 6)[:, None, None]
    write_video(path, frames, fps=8)
    return path


@pytest.mark.parametrize(("student", "teacher"), [
    ((4, 4, 16), (8, 2, 32)),   # the teacher sees more frames, closer together, and more pixels
    ((8, 2, 32), (4, 3, 16)),   # the student's clip is the larger one
    ((6, 2, 24), (6, 2, 24)),   # same shape: both clips are the same
])
def test_paired_clips_share_one_span_and_box(tmp_path: Path, student: tuple[int, int, int],
                                             teacher: tuple[int, int, int]) -> None:
    from kdsearch.data.video import PairedClipDataset

    video = VideoRecord(_gradient_video(tmp_path / "g.mp4"), 1, 40)
    dataset = PairedClipDataset([video], student=student, teacher=teacher)
    for seed in range(6):
        s, t = dataset.view(0, np.random.default_rng(seed))
        assert s.dtype == t.dtype == torch.uint8
        assert s.shape == (3, student[0], student[2], student[2])
        assert t.shape == (3, teacher[0], teacher[2], teacher[2])
        # Time: each clip keeps its own stride, and both are centred on one span.
        s_frames = s[2].float().mean(dim=(1, 2)).numpy() / 6
        t_frames = t[2].float().mean(dim=(1, 2)).numpy() / 6
        np.testing.assert_allclose(np.diff(s_frames), student[1], atol=0.6)
        np.testing.assert_allclose(np.diff(t_frames), teacher[1], atol=0.6)
        s_centre, t_centre = s_frames.mean(), t_frames.mean()
        assert abs(s_centre - t_centre) <= 1.0, (seed, s_frames, t_frames)
        # Space: the same box (and flip) in both: the smaller clip is the larger one's box
        # resized, so their mean red and green (position) agree.
        for channel in (0, 1):
            assert abs(s[channel].float().mean() - t[channel].float().mean()) < 3, (seed, channel)
        if student == teacher:
            assert torch.equal(s, t)


def test_paired_clips_see_different_boxes_and_flips_across_views(tmp_path: Path) -> None:
    from kdsearch.data.video import PairedClipDataset

    video = VideoRecord(_gradient_video(tmp_path / "g.mp4"), 0, 40)
    dataset = PairedClipDataset([video], student=(4, 2, 16), teacher=(8, 2, 32))
    # The red ramp's direction across a clip: rising, or falling when flipped.
    flips = set()
    reds = set()
    for seed in range(12):
        s, t = dataset.view(0, np.random.default_rng(seed))
        s_dir = float(s[0, 0, :, -1].float().mean() - s[0, 0, :, 0].float().mean())
        t_dir = float(t[0, 0, :, -1].float().mean() - t[0, 0, :, 0].float().mean())
        assert (s_dir > 0) == (t_dir > 0), seed
        flips.add(s_dir > 0)
        reds.add(round(float(t[0].float().mean())))
    assert flips == {True, False} and len(reds) > 2


def test_paired_clips_in_a_dataloader(tmp_path: Path) -> None:
    from kdsearch.data.video import PairedClipDataset

    records = [VideoRecord(_gradient_video(tmp_path / f"{i}.mp4", num_frames=20), i, 20)
               for i in range(3)]
    dataset = PairedClipDataset(records, student=(4, 2, 16), teacher=(8, 1, 32))
    s, labels, videos, t = next(iter(DataLoader(dataset, batch_size=3)))
    assert s.shape == (3, 3, 4, 16, 16) and t.shape == (3, 3, 8, 32, 32)
    assert labels.tolist() == videos.tolist() == [0, 1, 2]
