"""Small media files for tests: videos and frame folders whose frames can be told apart, and
broken files of every kind the probe classifies.

Frame ``i`` of a test video is drawn so that it survives lossy codecs, chroma subsampling,
resizing and rotation: a red marker in the top-left corner shows which way is up, and the
bottom half carries ``i`` in base 16 as two flat grey levels (high digit left, low digit
right). :func:`frame_number_of` reads ``i`` back from a decoded, upright RGB frame and refuses
frames that are turned or mirrored.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import OutputContainer
from PIL import Image

# Up to 256 frames: two base-16 digits. Levels stay inside limited-range YUV (16..235) and
# 13 apart, far more than the few levels a lossy codec or a resize moves a flat area.
_BASE = 16
_LOW_LEVEL, _LEVEL_STEP = 24, 13
_BACKGROUND = 128
_MARKER = (220, 30, 30)
MAX_TEST_FRAMES = _BASE * _BASE

BROKEN_KINDS = ("empty", "truncated", "not_video", "no_video_stream", "single_frame")
# Codecs the suffix implies when a caller does not choose: what each container can hold.
_SUFFIX_CODECS = {".webm": "libvpx-vp9", ".avi": "mpeg4", ".mov": "mpeg4"}
_SUFFIX_AUDIO = {".webm": "libopus", ".avi": "pcm_s16le", ".mkv": "flac"}


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """The upright uint8 RGB (height, width, 3) image of frame ``index``."""
    if not 0 <= index < MAX_TEST_FRAMES:
        raise ValueError(f"frame index {index} is out of range: test frames number 0 to "
                         f"{MAX_TEST_FRAMES - 1}")
    if width < 8 or height < 8:
        raise ValueError(f"test frame size {width}x{height} is too small: need at least 8x8")
    image = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    image[:height // 3, :width // 3] = _MARKER
    high, low = divmod(index, _BASE)
    image[height // 2:, :width // 2] = _LOW_LEVEL + _LEVEL_STEP * high
    image[height // 2:, width // 2:] = _LOW_LEVEL + _LEVEL_STEP * low
    return image


def frame_number_of(image: np.ndarray, num_frames: int) -> int:
    """The index of the test frame shown by a decoded RGB ``image`` (H, W, 3).

    Raises ValueError when the marker is not in the top-left corner (the frame is turned or
    mirrored) or the number is not below ``num_frames``.
    """
    height, width = image.shape[:2]
    pixels = image.astype(np.float32)
    redness = pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2
    corners = {"top-left": redness[:height // 4, :width // 4],
               "top-right": redness[:height // 4, -(width // 4):],
               "bottom-left": redness[-(height // 4):, :width // 4],
               "bottom-right": redness[-(height // 4):, -(width // 4):]}
    marker = max(corners, key=lambda name: float(corners[name].mean()))
    if marker != "top-left":
        raise ValueError(f"test frame marker is at the {marker}, but an upright frame has it "
                         "at the top-left")
    rows = slice(height * 5 // 8, height * 7 // 8 + 1)
    high = _digit(pixels[rows, width // 8:width * 3 // 8 + 1])
    low = _digit(pixels[rows, width * 5 // 8:width * 7 // 8 + 1])
    number = high * _BASE + low
    if number >= num_frames:
        raise ValueError(f"test frame number {number} is out of range for {num_frames} frames")
    return number


def _digit(area: np.ndarray) -> int:
    level = float(np.median(area))
    return int(np.clip(round((level - _LOW_LEVEL) / _LEVEL_STEP), 0, _BASE - 1))


def write_test_video(path: Path, *, num_frames: int = 16, width: int = 64, height: int = 48,
                     fps: int = 16, codec: str | None = None, pix_fmt: str | None = None,
                     rotation: int = 0, bframes: bool = True, gop: int | None = None) -> Path:
    """Encode ``num_frames`` test frames (see :func:`frame_image`) to ``path``.

    ``width`` x ``height`` is the upright size. ``rotation`` (0/90/180/270) is the clockwise
    turn a player applies to decoded frames: the stored frames are turned the other way and
    the container carries a display matrix, as phone videos do. ``gop`` fixes the keyframe
    interval (the encoder's default when None); ``bframes`` asks for B-frames where the codec
    has them. ``codec`` defaults to one the container holds (libx264, VP9 for webm, MPEG-4
    for avi and mov). Missing parent folders are created.
    """
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation {rotation} is not one of 0, 90, 180, 270")
    if not 1 <= num_frames <= MAX_TEST_FRAMES:
        raise ValueError(f"num_frames {num_frames} is out of range: need 1..{MAX_TEST_FRAMES}")
    return _encode(Path(path), num_frames=num_frames, width=width, height=height, fps=fps,
                   codec=codec or _codec_for(Path(path)), pix_fmt=pix_fmt, rotation=rotation,
                   bframes=bframes, gop=gop, container_options={})


def _encode(path: Path, *, num_frames: int, width: int, height: int, fps: int, codec: str,
            pix_fmt: str | None, rotation: int, bframes: bool, gop: int | None,
            container_options: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=container_options) as container:
        stream = _video_stream(container, codec, fps, pix_fmt, bframes, gop)
        stored_w, stored_h = (height, width) if rotation in (90, 270) else (width, height)
        stream.width, stream.height = stored_w, stored_h
        if rotation:
            # PyAV takes counter-clockwise degrees; the player turns frames by the inverse.
            stream.set_display_rotation(-rotation)
        for index in range(num_frames):
            # Stored frames are the upright image turned counter-clockwise by `rotation`.
            image = np.rot90(frame_image(index, width, height), k=rotation // 90)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _video_stream(container: OutputContainer, codec: str, fps: int, pix_fmt: str | None,
                  bframes: bool, gop: int | None) -> av.VideoStream:
    options: dict[str, str] = {}
    if codec == "libx264":
        params = [f"bframes={2 if bframes else 0}", "b-adapt=0", "scenecut=0"]
        params += [f"keyint={gop}"] if gop else []
        options = {"qp": "10", "preset": "veryfast", "threads": "1",
                   "x264-params": ":".join(params)}
    elif codec in ("libvpx-vp9", "libvpx"):
        options = {"crf": "8", "b": "0", "deadline": "realtime", "cpu-used": "8",
                   "threads": "1"}
    stream = container.add_stream(codec, rate=fps, options=options)
    if not isinstance(stream, av.VideoStream):
        raise ValueError(f"codec {codec!r} is not a video codec")
    stream.time_base = Fraction(1, fps)
    stream.codec_context.time_base = Fraction(1, fps)
    if pix_fmt:
        stream.pix_fmt = pix_fmt
    elif codec == "mjpeg":
        stream.pix_fmt = "yuvj420p"
    if codec in ("mpeg4", "mjpeg", "libvpx", "libvpx-vp9"):
        stream.bit_rate = 8_000_000
    if codec == "mpeg4" and bframes:
        stream.codec_context.max_b_frames = 2
    if gop and codec != "libx264":
        stream.codec_context.gop_size = gop
    return stream


def write_frame_folder(folder: Path, *, num_frames: int = 16, width: int = 64, height: int = 48,
                       ext: str = ".jpg", name: str = "img_{:05d}") -> Path:
    """Write test frames as images ``name.format(i + 1) + ext`` (1-based, as ffmpeg numbers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_frames):
        image = Image.fromarray(frame_image(index, width, height))
        image.save(folder / (name.format(index + 1) + ext), quality=95)  # PNG ignores quality
    return folder


def write_broken(path: Path, kind: str, *, num_frames: int = 64, keep: float = 0.6,
                 faststart: bool = False) -> Path:
    """Write a broken or unusual media file of ``kind`` (one of :data:`BROKEN_KINDS`).

    "truncated" writes a real ``num_frames`` video in the container the suffix names and cuts
    it to ``keep`` of its bytes: a plain .mp4 or .mov then loses its index (moov, written last)
    and no longer opens, a ``faststart`` one keeps it and still opens; .mkv, .webm and .avi
    still open. "no_video_stream" writes audio only (aac, or what the suffix's container
    takes), "single_frame" a one-frame video.
    """
    path = Path(path)
    if kind not in BROKEN_KINDS:
        raise ValueError(f"broken media kind {kind!r} is not one of {', '.join(BROKEN_KINDS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_video":
        path.write_bytes(b"this is a text file, not a video\n" * 20)
    elif kind == "no_video_stream":
        _write_audio(path)
    elif kind == "single_frame":
        write_test_video(path, num_frames=1, codec=_codec_for(path))
    else:
        _write_truncated(path, num_frames, keep, faststart)
    return path


def _codec_for(path: Path) -> str:
    return _SUFFIX_CODECS.get(path.suffix.lower(), "libx264")


def _write_truncated(path: Path, num_frames: int, keep: float, faststart: bool) -> None:
    if not 0 < keep < 1:
        raise ValueError(f"keep {keep} is out of range: need 0 < keep < 1")
    # Written whole, then cut to a prefix: what a download or copy cut short leaves.
    _encode(path, num_frames=num_frames, width=64, height=48, fps=16, codec=_codec_for(path),
            pix_fmt=None, rotation=0, bframes=True, gop=8,
            container_options={"movflags": "faststart"} if faststart else {})
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _write_audio(path: Path, seconds: float = 0.5, rate: int = 48000) -> None:
    codec = _SUFFIX_AUDIO.get(path.suffix.lower(), "aac")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        if not isinstance(stream, av.AudioStream):
            raise ValueError(f"codec {codec!r} is not an audio codec")
        stream.layout = "mono"
        samples = 1024 if codec == "aac" else 960
        tone = np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate) * 0.2
        for offset in range(0, len(tone), samples):
            chunk = tone[offset:offset + samples].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, offset
            container.mux(stream.encode(frame))
        container.mux(stream.encode())

