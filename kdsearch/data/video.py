"""Video folders on disk and the clip dataset for training and evaluation.

A video folder is laid out as ``<root>/<split>/<class>/<video>.<ext>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from kdsearch.data import probe
from kdsearch.data.decode import read_video_frames
from kdsearch.data.frames import read_frame_files
from kdsearch.data.media import DecodeError, clip_indices, rotate_frames

# Training resizes the short side to crop_size * 8/7 before a random crop (as 256 -> 224).
_RESIZE_RATIO = 8 / 7


@dataclass(frozen=True)
class VideoRecord:
    """One video of a data set, as an index lists it."""

    path: Path  # a video file, or a folder of frames when kind == "frames"
    label: int
    num_frames: int = 0  # decodable frames, from the index; 0 = unknown: probed on first use
    kind: Literal["video", "frames"] = "video"
    rotation: int = 0  # clockwise degrees (0/90/180/270) that turn decoded frames upright


class VideoClipDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Clips of ``num_frames`` frames, ``stride`` apart, as normalised float32 [3, T, H, W]
    (or, with ``uint8=True``, the cropped RGB values as uint8 [3, T, H, W]).

    Training draws one clip per video per item: a random start, a short-side resize to
    ``crop_size * 8/7`` (in the decoder), a random square crop and a random horizontal flip.
    Evaluation takes ``clips_per_video`` clips per video with starts spread evenly over it
    (one clip is the centre clip), resized the same way and centre-cropped. Items are (clip,
    label, video index), so that clip scores can be averaged per video. A clip running past
    the end of a video repeats its last frame.

    Records of kind "frames" are frame folders. A record's ``num_frames`` of 0 is probed on
    first use, once per dataset copy (each DataLoader worker has its own).

    Training randomness comes from torch's global RNG (mixed with ``seed``): reproducible under
    ``torch.manual_seed`` and different in every DataLoader worker and epoch.
    """

    def __init__(self, records: Sequence[VideoRecord], *, num_frames: int, stride: int,
                 crop_size: int, train: bool, clips_per_video: int = 1,
                 mean: Sequence[float] = (0.45, 0.45, 0.45),
                 std: Sequence[float] = (0.225, 0.225, 0.225), seed: int = 0,
                 uint8: bool = False) -> None:
        _check_dataset_arguments(records, num_frames, stride, crop_size, clips_per_video, mean,
                                 std)
        self.records = list(records)
        self.num_frames, self.stride, self.crop_size = num_frames, stride, crop_size
        self.train, self.clips_per_video, self.seed = train, clips_per_video, seed
        # uint8 clips skip mean/std here: the consumer converts (see engine.to_model_input).
        self.uint8 = uint8
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
        # (x / 255 - mean) / std as one multiply and one subtract.
        self._scale = (1 / (255 * self.std)).numpy()
        self._shift = (self.mean / self.std).numpy()
        # Filled lazily: probing every file up front would cost a pass before training.
        self._frame_counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.records) * (1 if self.train else self.clips_per_video)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} clips")
        if self.train:
            rng = np.random.default_rng([self.seed % 2**64, index,
                                         int(torch.randint(0, 2**62, ()).item())])
            video = index
            start = int(rng.integers(0, self._last_start(video) + 1))
        else:
            rng = None
            video, clip = divmod(index, self.clips_per_video)
            start = (2 * clip + 1) * self._last_start(video) // (2 * self.clips_per_video)
        return self.clip(video, start, rng), self.records[video].label, video

    def clip(self, video: int, start: int, rng: np.random.Generator | None) -> torch.Tensor:
        """The clip of video ``video`` from frame ``start``: randomly cropped and flipped with
        ``rng``, centre-cropped without. DecodeError when neither it nor the clip from frame 0
        decodes."""
        record = self.records[video]
        count = self.video_frames(video)
        try:
            frames = self._read(record, clip_indices(count, start, self.num_frames, self.stride))
        except DecodeError as error:
            if start == 0:
                raise
            # A broken stretch mid-file should not end a run: the clip from the start is the
            # one most likely to decode.
            try:
                frames = self._read(record, clip_indices(count, 0, self.num_frames, self.stride))
            except DecodeError as retry_error:
                raise DecodeError(f"{_describe(record)}: the clip from frame {start} "
                                  f"({error}) and the retry from frame 0 ({retry_error}) do "
                                  "not decode") from retry_error
        return self._transform(frames, rng)

    def video_frames(self, video: int) -> int:
        """Decodable frames of video ``video``: the record's count, else probed once."""
        record = self.records[video]
        if record.num_frames > 0:
            return record.num_frames
        if video not in self._frame_counts:
            self._frame_counts[video] = _probe_frame_count(record)
        return self._frame_counts[video]

    def _last_start(self, video: int) -> int:
        return max(self.video_frames(video) - ((self.num_frames - 1) * self.stride + 1), 0)

    def _read(self, record: VideoRecord, indices: list[int]) -> np.ndarray:
        short_side = round(self.crop_size * _RESIZE_RATIO)
        if record.kind == "frames":
            frames = read_frame_files(record.path, indices, short_side=short_side)
            return rotate_frames(frames, record.rotation)
        return read_video_frames(record.path, indices, rotation=record.rotation,
                                 short_side=short_side)

    def _transform(self, frames: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> cropped, maybe flipped, normalised float32 (3, T, S, S).

        In numpy, cropping before converting: torch's multi-threaded kernels gain nothing on
        a clip this small, and their spinning threads slow the decoder down when items are
        made in the main process.
        """
        top, left = _crop_corner(frames.shape[1], frames.shape[2], self.crop_size, rng)
        clip = frames[:, top:top + self.crop_size, left:left + self.crop_size]
        if rng is not None and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        if self.uint8:
            return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))
        normalised = clip.transpose(3, 0, 1, 2).astype(np.float32, order="C")
        normalised *= self._scale
        normalised -= self._shift
        return torch.from_numpy(normalised)


def _probe_frame_count(record: VideoRecord) -> int:
    if record.kind == "frames":
        info = probe.probe_frames(record.path)
    else:
        info = probe.probe_video(record.path)
    if info.num_frames < 1:
        raise DecodeError(f"{_describe(record)} is unusable: {info.reason} "
                          f"(probe status {info.status!r})")
    return info.num_frames


def _describe(record: VideoRecord) -> str:
    return f"{'frame folder' if record.kind == 'frames' else 'video'} {record.path}"


def _crop_corner(height: int, width: int, size: int, rng: np.random.Generator | None
                 ) -> tuple[int, int]:
    """Top-left corner of a square crop: centred, or uniformly random when ``rng`` is given."""
    if rng is None:
        return (height - size) // 2, (width - size) // 2
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def _check_dataset_arguments(records: Sequence[VideoRecord], num_frames: int, stride: int,
                             crop_size: int, clips_per_video: int, mean: Sequence[float],
                             std: Sequence[float]) -> None:
    if not records:
        raise ValueError("The value of `records` is empty, but a dataset needs at least one video")
    for name, value in (("num_frames", num_frames), ("stride", stride),
                        ("crop_size", crop_size), ("clips_per_video", clips_per_video)):
        if value < 1:
            raise ValueError(f"The value of `{name}` is {value}, but must be `{name} >= 1`")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"The values of `mean` {tuple(mean)} and `std` {tuple(std)} must be "
                         "three numbers each (RGB), with std > 0")


class PairedClipDataset(Dataset[tuple[torch.Tensor, int, int, torch.Tensor]]):
    """Training views for a student and its teacher: each view is one time span, one crop box
    and one flip, and both clips are sampled from it at each model's own frames, stride and
    size, so the teacher's logits always belong to what the student saw.

    The span is the longer of the two clips' extents; each clip is centred in it. Frames are
    decoded once, for both clips, at the larger crop's resolution; the box is cut there and
    the smaller clip is that same box resized down (area-averaged). Items are (student clip,
    label, video index, teacher clip), both uint8 [3, T, S, S]. Randomness as in
    :class:`VideoClipDataset` (train=True); :meth:`view` takes its own generator.
    """

    def __init__(self, records: Sequence[VideoRecord], *, student: tuple[int, int, int],
                 teacher: tuple[int, int, int], seed: int = 0) -> None:
        """``student`` and ``teacher`` are (num_frames, stride, crop_size)."""
        self.student, self.teacher, self.seed = student, teacher, seed
        crop = max(student[2], teacher[2])
        extent = max(_extent(student), _extent(teacher))
        # Decodes at the larger crop; its num_frames and stride give the span's extent.
        self.decoder = VideoClipDataset(records, num_frames=extent, stride=1, crop_size=crop,
                                        train=True, uint8=True)
        for shape in (student, teacher):
            _check_dataset_arguments(records, shape[0], shape[1], shape[2], 1, (0, 0, 0),
                                     (1, 1, 1))

    @property
    def records(self) -> list[VideoRecord]:
        return self.decoder.records

    def __len__(self) -> int:
        return len(self.decoder.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} videos")
        rng = np.random.default_rng([self.seed % 2**64, index,
                                     int(torch.randint(0, 2**62, ()).item())])
        student, teacher = self.view(index, rng)
        return student, self.records[index].label, index, teacher

    def view(self, video: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(student clip, teacher clip) of one random view of video ``video``."""
        start = int(rng.integers(0, self.decoder._last_start(video) + 1))
        try:
            frames, rows = self._frames(video, start)
        except DecodeError as error:
            if start == 0:
                raise
            try:  # as VideoClipDataset.clip: the clip from the start is the likeliest to decode
                frames, rows = self._frames(video, 0)
            except DecodeError as retry_error:
                raise DecodeError(f"{_describe(self.records[video])}: the view from frame "
                                  f"{start} ({error}) and the retry from frame 0 "
                                  f"({retry_error}) do not decode") from retry_error
        size = self.decoder.crop_size
        top, left = _crop_corner(frames.shape[1], frames.shape[2], size, rng)
        box = frames[:, top:top + size, left:left + size]
        if rng.random() < 0.5:
            box = box[:, :, ::-1]
        return (_resized(box[rows[0]], self.student[2]), _resized(box[rows[1]], self.teacher[2]))

    def _frames(self, video: int, start: int) -> tuple[np.ndarray, tuple[list[int], list[int]]]:
        """The decoded frames both clips need (each once) from the span starting at ``start``,
        and each clip's rows among them."""
        count = self.decoder.video_frames(video)
        span = self.decoder.num_frames
        wanted = [clip_indices(count, start + (span - _extent(shape)) // 2, shape[0], shape[1])
                  for shape in (self.student, self.teacher)]
        union = sorted(set(wanted[0]) | set(wanted[1]))
        row = {frame: i for i, frame in enumerate(union)}
        frames = self.decoder._read(self.records[video], union)
        return frames, ([row[f] for f in wanted[0]], [row[f] for f in wanted[1]])


def _extent(shape: tuple[int, int, int]) -> int:
    """Frames a clip of (num_frames, stride, crop) spans, first to last."""
    return (shape[0] - 1) * shape[1] + 1


def _resized(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, S, S, 3) -> uint8 [3, T, size, size]; area-averaged when smaller."""
    clip = torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))
    if clip.shape[-1] == size:
        return clip
    smaller = torch.nn.functional.interpolate(clip.float(), size=(size, size), mode="area")
    return smaller.round_().clamp_(0, 255).to(torch.uint8)
