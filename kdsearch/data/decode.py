"""Seeking clip decoding with PyAV: the frames of a clip, decoded from the keyframe before
them and converted (and resized) only where needed. Also the timeline and seek helpers that
the probe (:mod:`kdsearch.data.probe`) counts frames with."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.video.reformatter import VideoReformatter

from kdsearch.data.media import fill_missing, rotate_frames, scaled_size

# What PyAV raises on broken media: its own FFmpegError mostly, but not only.
MEDIA_ERRORS = (av.FFmpegError, OSError, ValueError, RuntimeError)


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


class SeekMissed(Exception):
    """Timestamps after a seek cannot place frames: decode from the start instead."""


def _decode_wanted(path: Path, wanted: list[int], short_side: int | None, target: int
                   ) -> _Decoded:
    """The frames ``wanted`` that decode, seeking to the keyframe at or before frame
    ``target`` (decoding from the start when it is 0)."""
    try:
        container = open_container(path)
    except MEDIA_ERRORS as error:
        return _Decoded(error=f"cannot open: {error}")
    with container:
        if not container.streams.video:
            return _Decoded(error="no video stream")
        stream = container.streams.video[0]
        try:
            timeline = Timeline.of(container, stream) if target > 0 else None
        except MEDIA_ERRORS:
            timeline = None  # cannot find the first frame's timestamp: count from the start
        if timeline is None:
            return _collect(enumerate(all_frames(container, stream)), wanted, short_side, 0)
        try:
            return _collect(seeked_frames(container, stream, timeline, target), wanted,
                            short_side, target)
        except SeekMissed:
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


def open_container(path: Path) -> InputContainer:
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


def all_frames(container: InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    # demux ends with an empty packet per stream, whose decode flushes delayed frames.
    for packet in container.demux(stream):
        yield from packet.decode()


@dataclass(frozen=True)
class Timeline:
    """Frame index <-> timestamp of a constant-frame-rate stream."""

    origin: int  # the first frame's timestamp
    ticks: Fraction  # timestamp units per frame

    @classmethod
    def of(cls, container: InputContainer, stream: av.VideoStream) -> Timeline | None:
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


def seeked_frames(container: InputContainer, stream: av.VideoStream, timeline: Timeline,
                   first: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) from the keyframe at or before frame ``first`` to the end."""
    container.seek(timeline.seek_target(first), stream=stream, backward=True)
    previous: int | None = None
    for frame in all_frames(container, stream):
        if frame.pts is None:
            raise SeekMissed
        index = timeline.index_of(frame.pts)
        if previous is not None and index <= previous:
            raise SeekMissed  # timestamps out of order cannot number frames
        previous = index
        yield index, frame
