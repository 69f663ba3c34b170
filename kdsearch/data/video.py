"""Video folders on disk, seeking clip decoding with PyAV, and a clip dataset for training and
evaluation.

A video folder is laid out as ``<root>/<split>/<class>/<video>.<ext>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from av.container import InputContainer
from av.video.reformatter import VideoReformatter
from torch.utils.data import Dataset

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")

# What PyAV raises on broken media: its own FFmpegError mostly, but not only.
MEDIA_ERRORS = (av.FFmpegError, OSError, ValueError, RuntimeError)

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


class DecodeError(ValueError):
    """A clip could not be decoded; the message names the file and the reason."""


def clip_indices(video_frames: int, start: int, num_frames: int, stride: int) -> list[int]:
    """Frames ``start, start + stride, ...`` clamped to ``video_frames - 1``: a video too short
    for the clip is padded by repeating its last frame."""
    if video_frames < 1 or start < 0 or num_frames < 1 or stride < 1:
        raise ValueError(f"clip of video_frames={video_frames}, start={start}, "
                         f"num_frames={num_frames}, stride={stride} is invalid: need "
                         "video_frames >= 1, start >= 0, num_frames >= 1, stride >= 1")
    return [min(start + k * stride, video_frames - 1) for k in range(num_frames)]


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side resized to ``short_side``, keeping the aspect."""
    if short_side is None or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
    """(T, H, W, C) frames turned clockwise by ``rotation`` degrees (0/90/180/270)."""
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation {rotation} is not one of 0, 90, 180, 270 (clockwise degrees)")
    if rotation == 0:
        return frames
    # A copy: torch.from_numpy refuses the negative strides a rotated view has.
    return np.ascontiguousarray(np.rot90(frames, k=-rotation // 90, axes=(1, 2)))


def fill_missing(indices: Sequence[int], good: dict[int, np.ndarray], source: str,
                 reason: str = "") -> np.ndarray:
    """Frames at ``indices`` from ``good``; a missing one repeats the last good frame before it
    (the first good one when none is before it). DecodeError naming ``source`` when ``good`` is
    empty."""
    if not good:
        raise DecodeError(f"{source}: none of frames {min(indices)}..{max(indices)} decodes"
                          + (f" ({reason})" if reason else ""))
    known = sorted(good)
    frames = []
    for index in indices:
        earlier = [k for k in known if k <= index]
        frames.append(good[earlier[-1] if earlier else known[0]])
    return np.stack(frames)


def read_video_frames(path: Path, indices: Sequence[int], *, rotation: int = 0,
                      short_side: int | None = None) -> np.ndarray:
    """Frames ``indices`` of the video at ``path`` as uint8 RGB (len(indices), H, W, 3).

    Seeks to the keyframe at or before the first frame needed, decodes only up to the last one
    and converts only the frames needed, resized in swscale to short side ``short_side`` when
    given, then turned upright by ``rotation``. A needed frame that does not decode (a broken
    packet, a file that ends early) repeats the last good frame before it: frames past the end
    repeat the last frame. DecodeError when none of the frames needed decodes (all past the
    end, say, when an index counted more frames than the file holds).
    """
    if not indices or min(indices) < 0:
        raise ValueError(f"frame indices {list(indices)} are invalid: need at least one, all >= 0")
    wanted = sorted(set(indices))
    target = wanted[0]
    for attempt in range(_SEEK_ATTEMPTS):
        # The last attempt decodes from the start, numbering frames by counting.
        decoded = _decode_wanted(path, wanted, short_side,
                                 target if attempt < _SEEK_ATTEMPTS - 1 else 0)
        if decoded.retry_from is None:
            break
        target = decoded.retry_from
    frames = fill_missing(indices, decoded.frames, f"video {path}", decoded.error)
    return rotate_frames(frames, rotation)


# Seeks that land after the first frame needed retry from further back, then from the start.
_SEEK_ATTEMPTS = 4


@dataclass
class _Decoded:
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    error: str = ""
    retry_from: int | None = None  # the seek missed: try again from this frame


class _SeekMissed(Exception):
    """Timestamps after a seek cannot place frames: decode from the start instead."""


def _decode_wanted(path: Path, wanted: list[int], short_side: int | None, target: int
                   ) -> _Decoded:
    """The frames ``wanted`` that decode, seeking to the keyframe at or before frame
    ``target`` (decoding from the start when it is 0)."""
    try:
        container = _open(path)
    except MEDIA_ERRORS as error:
        return _Decoded(error=f"cannot open: {error}")
    with container:
        if not container.streams.video:
            return _Decoded(error="no video stream")
        stream = container.streams.video[0]
        try:
            timeline = _Timeline.of(container, stream) if target > 0 else None
        except MEDIA_ERRORS:
            timeline = None  # cannot find the first frame's timestamp: count from the start
        if timeline is None:
            return _collect(enumerate(_all_frames(container, stream)), wanted, short_side, 0)
        try:
            return _collect(_seeked_frames(container, stream, timeline, target), wanted,
                            short_side, target)
        except _SeekMissed:
            return _Decoded(retry_from=0)


def _collect(frames: Iterator[tuple[int, av.VideoFrame]], wanted: list[int],
             short_side: int | None, target: int) -> _Decoded:
    result = _Decoded()
    convert = _converter(short_side)
    last: tuple[int, av.VideoFrame] | None = None
    try:
        for index, frame in frames:
            if last is None and index > wanted[0]:
                # The keyframe found shows frames after the target (B-frames coded before
                # it, a coarse index): step back by at least twice the miss.
                back = min(target - 1, wanted[0] - 2 * (index - wanted[0]))
                return _Decoded(retry_from=max(0, back))
            if index in wanted:
                result.frames[index] = convert(frame)
            last = (index, frame)
            if index >= wanted[-1]:
                break
    except MEDIA_ERRORS as error:
        result.error = f"decoding stopped after frame {last[0] if last else None}: {error}"
    if last is not None and last[0] < wanted[-1]:
        if not result.frames:  # all needed frames lie past the end: nothing to pad
            result.error = result.error or f"the video ends at frame {last[0]}"
        elif last[0] not in result.frames:
            # The file ended (or broke) before the last needed frame: its last frame pads.
            result.frames[last[0]] = convert(last[1])
    return result


def _open(path: Path) -> InputContainer:
    # Broken metadata (a tag that is not UTF-8) should not stop the frames from decoding.
    return av.open(str(path), metadata_errors="replace")


def _converter(short_side: int | None) -> Callable[[av.VideoFrame], np.ndarray]:
    # One reformatter (one swscale context) per clip: a fresh one per frame, as
    # VideoFrame.to_ndarray makes, costs more than decoding small frames.
    reformatter = VideoReformatter()
    size: list[tuple[int, int]] = []

    def convert(frame: av.VideoFrame) -> np.ndarray:
        if not size:  # every frame of a clip gets the first frame's size, so that they stack
            size.append(scaled_size(frame.width, frame.height, short_side))
        width, height = size[0]
        return reformatter.reformat(frame, width=width, height=height,
                                    format="rgb24").to_ndarray()
    return convert


def _all_frames(container: InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    # demux ends with an empty packet per stream, whose decode flushes delayed frames.
    for packet in container.demux(stream):
        yield from packet.decode()


@dataclass(frozen=True)
class _Timeline:
    """Frame index <-> timestamp of a constant-frame-rate stream."""

    origin: int  # the first frame's timestamp
    ticks: Fraction  # timestamp units per frame

    @classmethod
    def of(cls, container: InputContainer, stream: av.VideoStream) -> _Timeline | None:
        """The stream's timeline, None when its timestamps cannot place frames."""
        rate = stream.average_rate or stream.guessed_rate
        if not rate or not stream.time_base:
            return None
        ticks = 1 / (Fraction(rate) * stream.time_base)
        if "avi" not in container.format.name.split(","):
            return cls(stream.start_time or 0, ticks)
        origin = _avi_origin(container, stream)
        return None if origin is None else cls(origin, ticks)

    def seek_target(self, index: int) -> int:
        # The middle of the frame: muxers round timestamps (to milliseconds in Matroska), so
        # frame i may sit a tick after i * ticks, and seeking to that would miss its keyframe.
        return int(self.origin + (index + Fraction(1, 2)) * self.ticks)

    def index_of(self, timestamp: int) -> int:
        return round((timestamp - self.origin) / self.ticks)


def _avi_origin(container: InputContainer, stream: av.VideoStream) -> int | None:
    """The first frame's pts in an AVI file, which stores only a frame counter in decode order.

    FFmpeg's parsers rebuild presentation order for MPEG-4 part 2 (the usual AVI codec), with
    the first pts shifted by the B-frame delay: the first packet shows that shift. H.264 and
    HEVC frames come out with decode-order pts, which cannot place them.
    """
    if stream.codec_context.name in ("h264", "hevc"):
        return None
    container.seek(stream.start_time or 0, stream=stream, backward=True)
    for packet in container.demux(stream):
        return packet.pts
    return None


def _seeked_frames(container: InputContainer, stream: av.VideoStream, timeline: _Timeline,
                   first: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) from the keyframe at or before frame ``first`` to the end."""
    container.seek(timeline.seek_target(first), stream=stream, backward=True)
    previous: int | None = None
    for frame in _all_frames(container, stream):
        if frame.pts is None:
            raise _SeekMissed
        index = timeline.index_of(frame.pts)
        if previous is not None and index <= previous:
            raise _SeekMissed  # timestamps out of order cannot number frames
        previous = index
        yield index, frame


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
            from kdsearch.data.frames import read_frame_files  # frames.py imports this module

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
    from kdsearch.data import probe  # probe.py imports this module

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
