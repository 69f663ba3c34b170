"""What a media file or frame folder holds, and whether it is usable: for building an index.

The probes never raise for broken media; they classify it. ``num_frames`` is the number of
frames that actually decode, found cheaply: the container's count (or duration x rate) is an
estimate that a decode from the last keyframes to the end confirms or corrects.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
from av.container import InputContainer
from PIL import Image

from kdsearch.data.decode import (
    MEDIA_ERRORS,
    SeekMissed,
    Timeline,
    all_frames,
    open_container,
    seeked_frames,
)
from kdsearch.data.frames import FRAME_EXTENSIONS, list_frames
from kdsearch.data.media import printable_name, too_large

STATUSES = ("ok", "empty", "not_video", "no_video_stream", "single_frame", "undecodable",
            "no_frames", "too_large")


@dataclass(frozen=True)
class MediaInfo:
    status: str  # "ok", or one of STATUSES[1:]: why the media is unusable or special
    reason: str  # one line for people; "" when ok without remarks
    num_frames: int  # decodable frames (0 when unusable)
    fps: float | None
    duration: float | None  # seconds
    width: int  # upright size (after rotation); 0 when unknown
    height: int
    rotation: int  # clockwise degrees (0/90/180/270) that turn decoded frames upright


def _unusable(status: str, reason: str) -> MediaInfo:
    return MediaInfo(status, reason, 0, None, None, 0, 0, 0)


def _oversized(width: int, height: int) -> MediaInfo:
    """Too many pixels per frame (kdsearch.data.media.MAX_PIXELS); the size is kept."""
    return MediaInfo("too_large", too_large(width, height) or "", 0, None, None, width, height,
                     0)


def probe_video(path: Path) -> MediaInfo:
    """Classify the video file at ``path`` and count its decodable frames."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        return _unusable("not_video", f"cannot read the file ({error.strerror or error})")
    if size == 0:
        return _unusable("empty", "empty file (0 bytes)")
    with _ffmpeg_errors() as logs:
        try:
            container = open_container(path)
        except MEDIA_ERRORS as error:
            return _open_failure(path, error, logs)
        with container:
            try:
                return _probe_container(path, container, logs)
            except MEDIA_ERRORS as error:  # whatever else broken media makes PyAV raise
                return _unusable("undecodable", f"decoding failed ({_pyav_message(error, logs)})")


# Probes run in threads (an index probes many files at once) while FFmpeg's log level is
# process-wide: the first probe in raises it, the last one out restores it.
_log_lock = threading.Lock()
_log_users = 0
_log_previous: tuple[int | None, bool] = (None, True)


@contextlib.contextmanager
def _ffmpeg_errors() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's error log lines of this thread while probing: they hold the real reason
    ("moov atom not found") behind PyAV's generic exceptions. PyAV keeps FFmpeg's log off by
    default."""
    global _log_users, _log_previous
    with _log_lock:
        if _log_users == 0:
            _log_previous = (av.logging.get_level(), av.logging.get_skip_repeated())
            if _log_previous[0] is None or _log_previous[0] < av.logging.ERROR:
                av.logging.set_level(av.logging.ERROR)
            # PyAV drops a line equal to the one before: the second cut mp4 in a row would
            # lose its "moov atom not found".
            av.logging.set_skip_repeated(False)
        _log_users += 1
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        with _log_lock:
            _log_users -= 1
            if _log_users == 0:
                av.logging.set_level(_log_previous[0])
                av.logging.set_skip_repeated(_log_previous[1])


def _log_summary(logs: list[tuple[int, str, str]]) -> str:
    lines = dict.fromkeys(f"{name}: {message.strip()}" if name else message.strip()
                          for _, name, message in logs if message.strip())
    return "; ".join(list(lines)[:3])


def _pyav_message(error: BaseException, logs: list[tuple[int, str, str]]) -> str:
    text = getattr(error, "strerror", None) or str(error)
    details = _log_summary(logs)
    return f"PyAV: {text}" + (f"; {details}" if details else "")


def _open_failure(path: Path, error: BaseException, logs: list[tuple[int, str, str]]
                  ) -> MediaInfo:
    # FFmpeg falls back to the demuxer the extension names, so its log alone cannot tell a
    # cut mp4 (no "moov" index) from a text file called .mp4; the file's magic bytes can.
    if _has_media_signature(path):
        return _unusable("undecodable", f"broken container ({_pyav_message(error, logs)})")
    return _unusable("not_video", f"not a video ({_pyav_message(error, [])})")


def _has_media_signature(path: Path) -> bool:
    """Whether the file starts like an ISO media (mp4/mov), Matroska/WebM or AVI file."""
    try:
        with path.open("rb") as file:
            head = file.read(12)
    except OSError:
        return False
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
            or head[:4] == b"\x1a\x45\xdf\xa3"
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI "))


def _probe_container(path: Path, container: InputContainer,
                     logs: list[tuple[int, str, str]]) -> MediaInfo:
    if not container.streams.video:
        kinds = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                          for s in container.streams) or "none"
        return _unusable("no_video_stream", f"no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    # The stream's header gives the frame size: a frame too large is never decoded.
    codec = stream.codec_context
    if codec is not None and too_large(codec.width, codec.height):
        return _oversized(codec.width, codec.height)
    frames = all_frames(container, stream)
    try:
        first = next(frames, None)
    except MEDIA_ERRORS as error:
        return _unusable("undecodable", f"first frame does not decode "
                                        f"({_pyav_message(error, logs)})")
    if first is None:
        if logs:
            return _unusable("undecodable", f"no frame decodes ({_log_summary(logs)})")
        return _unusable("no_frames", "the video stream holds no frames")
    if too_large(first.width, first.height):  # a header without the size
        return _oversized(first.width, first.height)
    count, remark = _count_frames(path, container, stream, frames)
    rotation = _clockwise(first.rotation)
    width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    duration = count / fps if fps else _container_seconds(container)
    if count == 1:
        return MediaInfo("single_frame", "a single frame", 1, fps, duration, width, height,
                         rotation)
    return MediaInfo("ok", remark, count, fps, duration, width, height, rotation)


def _clockwise(counter_clockwise: float) -> int:
    """FFmpeg's display-matrix angle (counter-clockwise, as VideoFrame.rotation gives it) as
    the clockwise turn to apply: ffmpeg's autorotate turns a -90 file 90 degrees clockwise."""
    return int(round(-counter_clockwise / 90)) % 4 * 90


def _container_seconds(container: InputContainer) -> float | None:
    return container.duration / 1_000_000 if container.duration else None


def _estimate(container: InputContainer, stream: av.VideoStream) -> tuple[int, int] | None:
    """(frames the container claims, how many fewer still count as complete), or None."""
    if stream.frames > 0:
        return stream.frames, 0
    rate = stream.average_rate or stream.guessed_rate
    seconds = (float(stream.duration * stream.time_base)
               if stream.duration and stream.time_base else _container_seconds(container))
    if rate and seconds:
        # Durations are rounded and may or may not include the last frame's.
        return round(seconds * float(rate)), 1
    return None


def _count_frames(path: Path, container: InputContainer, stream: av.VideoStream,
                  rest: Iterator[av.VideoFrame]) -> tuple[int, str]:
    """Decodable frames, after the first one came from ``rest``; and a remark when fewer
    than the container claims."""
    estimate = _estimate(container, stream)
    if estimate is None or estimate[0] <= 2:
        count = 1 + _drain(rest)  # nothing to check, or nothing to skip
    else:
        count = (_count_from_end(container, stream, estimate[0])
                 or max(_count_from_start(path), 1))  # the first frame did decode
    if estimate is not None and count < estimate[0] - estimate[1]:
        return count, f"truncated: {count} of {estimate[0]} frames decodable"
    return count, ""


def _drain(frames: Iterator[av.VideoFrame]) -> int:
    count = 0
    with contextlib.suppress(*MEDIA_ERRORS):  # a broken packet ends what decodes
        for _ in frames:
            count += 1
    return count


def _count_from_end(container: InputContainer, stream: av.VideoStream, estimate: int
                    ) -> int | None:
    """The last decodable frame's index + 1, decoding from the keyframe before the claimed
    last frame; None when nothing decodes from there (a cut file whose index points past its
    end) or timestamps cannot place frames."""
    last: int | None = None
    try:
        timeline = Timeline.of(container, stream)
        if timeline is None:
            return None
        for index, _ in seeked_frames(container, stream, timeline, estimate - 1):
            last = index
    except SeekMissed:
        return None
    except MEDIA_ERRORS:
        pass  # a cut file: what decoded before the break counts
    return None if last is None else last + 1


def _count_from_start(path: Path) -> int:
    try:
        with open_container(path) as container:
            return _drain(all_frames(container, container.streams.video[0]))
    except MEDIA_ERRORS:
        return 0


def probe_frames(folder: Path, fps: float | None = None) -> MediaInfo:
    """Classify a frame folder: its images (see list_frames), the first one decoded. Frame
    folders have no rate of their own: ``fps``, when given, sets fps and duration."""
    folder = Path(folder)
    if not folder.is_dir():
        return _unusable("not_video", f"not a frame folder (no directory {folder})")
    files = list_frames(folder)
    if not files:
        return _unusable("no_frames", f"no image files ({', '.join(FRAME_EXTENSIONS)})")
    try:
        with Image.open(files[0]) as image:
            width, height = image.size  # read from the header; nothing decoded yet
            if too_large(width, height):
                return _oversized(width, height)
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return _unusable("undecodable", f"first frame {printable_name(files[0].name)} does "
                                        f"not decode ({printable_name(str(error))})")
    duration = len(files) / fps if fps else None
    if len(files) == 1:
        return MediaInfo("single_frame", "a single frame", 1, fps, duration, width, height, 0)
    return MediaInfo("ok", "", len(files), fps, duration, width, height, 0)
