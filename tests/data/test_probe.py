"""kdsearch.data.probe: frame counts, sizes and rotations, and broken media classified."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest

from kdsearch.data import DecodeError, probe_frames, probe_video, read_video_frames
from kdsearch.data import probe as probe_module
from kdsearch.testing.media import write_broken, write_frame_folder, write_test_video

from .helpers import FRAMES, numbers, write_ramp


def test_probe_counts_every_codec_exactly(coded: tuple[Path, list[np.ndarray]]) -> None:
    path, truth = coded
    info = probe_video(path)
    assert (info.status, info.reason, info.num_frames) == ("ok", "", len(truth))
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == 16 and info.duration == pytest.approx(FRAMES / 16)


def test_probe_counts_frames_from_the_container_and_from_the_duration(tmp_path: Path) -> None:
    mp4 = write_ramp(tmp_path / "ramp.mp4", 10)
    mkv = write_ramp(tmp_path / "ramp.mkv", 7)
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no count: duration
    assert probe_module.probe_video(mp4).num_frames == 10
    assert probe_module.probe_video(mkv).num_frames == 7


@pytest.mark.parametrize(("name", "status", "reason"), [
    ("empty.mp4", "empty", r"^empty file \(0 bytes\)$"),
    ("text.mp4", "not_video", r"^not a video \(PyAV: Invalid data found"),
    ("text.mkv", "not_video", r"^not a video \(PyAV: Invalid data found"),
    ("audio.m4a.mp4", "no_video_stream", r"^no video stream \(streams: audio aac\)$"),
    ("audio.mkv", "no_video_stream", r"^no video stream \(streams: audio flac\)$"),
    ("one.mp4", "single_frame", r"^a single frame$"),
    ("one.webm", "single_frame", r"^a single frame$"),
    ("cut.mp4", "undecodable", r"^broken container \(PyAV: .*moov atom not found\)$"),
    ("stub.webm", "undecodable", r"^no frame decodes \(matroska,webm: File ended"),
])
def test_probe_classifies_broken_media(media: Path, name: str, status: str,
                                       reason: str) -> None:
    kind = {"empty": "empty", "not_video": "not_video", "no_video_stream": "no_video_stream",
            "single_frame": "single_frame", "undecodable": "truncated"}[status]
    keep = 0.1 if name == "stub.webm" else 0.6  # a header and no whole frame
    info = probe_video(write_broken(media / f"probe-{name}", kind, keep=keep))
    assert info.status == status
    assert re.search(reason, info.reason), info.reason
    assert info.num_frames == (1 if status == "single_frame" else 0)


@pytest.mark.parametrize(("name", "faststart"), [("cut.mkv", False), ("cut.webm", False),
                                                 ("cut.avi", False), ("cut.mp4", True)])
def test_probe_counts_the_decodable_frames_of_a_truncated_file(media: Path, name: str,
                                                               faststart: bool) -> None:
    path = write_broken(media / f"count-{name}", "truncated", faststart=faststart)
    decodable = _count_until_error(path)
    info = probe_video(path)
    assert (info.status, info.num_frames) == ("ok", decodable)
    assert info.reason == f"truncated: {decodable} of 64 frames decodable"


def _count_until_error(path: Path) -> int:
    """Frames that decode from the start, up to the first error: the truth a probe finds."""
    count = 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux(video=0):
                count += len(packet.decode())
        except av.FFmpegError:
            pass
    return count


def test_probe_accepts_odd_and_tiny_sizes(media: Path) -> None:
    odd = write_test_video(media / "odd.mp4", num_frames=9, width=33, height=47,
                           pix_fmt="yuv444p")
    tiny = write_test_video(media / "tiny.mkv", num_frames=5, width=8, height=8)
    assert _fields(probe_video(odd)) == ("ok", 9, 33, 47)
    assert _fields(probe_video(tiny)) == ("ok", 5, 8, 8)
    assert numbers(read_video_frames(odd, [8, 3]), 9) == [8, 3]


def _fields(info: probe_module.MediaInfo) -> tuple[str, int, int, int]:
    return info.status, info.num_frames, info.width, info.height


def test_probes_in_threads_keep_their_reasons_and_restore_the_log_level(media: Path) -> None:
    cut = write_broken(media / "threads-cut.mp4", "truncated")
    good = write_test_video(media / "threads-good.mkv", num_frames=12, gop=4)
    paths = [cut, good] * 8
    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(probe_video, paths))
    assert av.logging.get_level() is None and av.logging.get_skip_repeated()
    for path, info in zip(paths, infos, strict=True):
        if path == cut:
            assert info.status == "undecodable" and "moov atom not found" in info.reason
        else:
            assert (info.status, info.num_frames) == ("ok", 12)


def test_probe_reports_a_missing_file(media: Path) -> None:
    info = probe_video(media / "missing.mp4")
    assert info.status == "not_video" and "cannot read the file" in info.reason


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_corrupt_files_are_classified_and_never_crash_a_reader(media: Path, suffix: str) -> None:
    codec = "mpeg4" if suffix == ".avi" else "libx264"
    data = write_test_video(media / f"fuzz-source{suffix}", num_frames=24, codec=codec,
                            gop=6).read_bytes()
    rng = random.Random(suffix)
    for trial in range(12):
        broken = bytearray(data)
        if trial % 2:
            for _ in range(rng.randint(1, 20)):
                broken[rng.randrange(len(broken))] = rng.randrange(256)
        else:
            broken = broken[:rng.randrange(len(broken))]
        path = media / f"fuzz-{trial}{suffix}"
        path.write_bytes(bytes(broken))
        assert probe_video(path).status in probe_module.STATUSES
        try:
            read_video_frames(path, sorted(rng.randrange(30) for _ in range(4)))
        except DecodeError as error:
            assert path.name in str(error)


# --- probe_frames ----------------------------------------------------------------------------

def test_probe_frames(tmp_path: Path) -> None:
    many = probe_frames(write_frame_folder(tmp_path / "many", num_frames=5), fps=25)
    assert many == probe_module.MediaInfo("ok", "", 5, 25, 0.2, 64, 48, 0)
    one = probe_frames(write_frame_folder(tmp_path / "one", num_frames=1))
    assert (one.status, one.reason, one.num_frames, one.fps) == (
        "single_frame", "a single frame", 1, None)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("no frames here")
    assert _status(probe_frames(tmp_path / "none")) == (
        "no_frames", "no image files (.jpg, .jpeg, .png)")
    broken = write_frame_folder(tmp_path / "broken", num_frames=3)
    (broken / "img_00001.jpg").write_bytes(b"junk")
    status, reason = _status(probe_frames(broken))
    assert status == "undecodable" and reason.startswith("first frame img_00001.jpg does not")


def _status(info: probe_module.MediaInfo) -> tuple[str, str]:
    return info.status, info.reason
