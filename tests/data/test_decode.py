"""kdsearch.data.decode: seeking clip decoding (read_video_frames) in every container."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from av.container import InputContainer

from kdsearch.data import DecodeError, clip_indices, probe_video, read_video_frames
from kdsearch.data import decode as decode_module
from kdsearch.testing.media import write_broken, write_test_video

from .helpers import CODEC_TOLERANCE, FRAMES, decode_all, levels, numbers, write_ramp


def test_seeking_reads_equal_decoding_from_the_start(
        coded: tuple[Path, list[np.ndarray]]) -> None:
    path, truth = coded
    rng = random.Random(path.name)
    for trial in range(25):
        # Repeated, unsorted and past-the-end indices; sorted ones every other time.
        indices = [rng.randrange(0, FRAMES + 5) for _ in range(rng.randint(1, 6))]
        if trial % 2:
            indices.sort()
        if min(indices) >= FRAMES:
            with pytest.raises(DecodeError, match="none of frames"):
                read_video_frames(path, indices)
            continue
        expected = np.stack([truth[min(i, FRAMES - 1)] for i in indices])
        assert np.array_equal(read_video_frames(path, indices), expected), indices


def test_reading_the_last_frames_and_a_keyframe_exactly(
        coded: tuple[Path, list[np.ndarray]]) -> None:
    path, truth = coded
    for indices in ([FRAMES - 1], [6], [5, 6, 7], [FRAMES - 2, FRAMES - 1, FRAMES + 10]):
        expected = np.stack([truth[min(i, FRAMES - 1)] for i in indices])
        assert np.array_equal(read_video_frames(path, indices), expected), indices


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_reading_decodes_from_the_keyframe_and_converts_only_needed_frames(
        media: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_test_video(media / f"count{suffix}", num_frames=FRAMES, gop=6,
                            codec="libx264" if suffix == ".mp4" else "mpeg4")
    decoded, converted = _count_work(monkeypatch)
    assert numbers(read_video_frames(path, [33, 35, 33])) == [33, 35, 33]
    # Keyframes every 6 frames (mpeg4 also codes B-frames before them): at most 2 GOPs.
    assert 3 <= len(decoded) <= 12 and len(converted) == 2


def _count_work(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    decoded: list[int] = []
    converted: list[int] = []
    all_frames, converter = decode_module.all_frames, decode_module._converter

    def counting_frames(container: InputContainer, stream: av.VideoStream
                        ) -> Iterator[av.VideoFrame]:
        for frame in all_frames(container, stream):
            decoded.append(1)
            yield frame

    def counting_converter(short_side: int | None) -> Callable[[av.VideoFrame], np.ndarray]:
        convert = converter(short_side)

        def counting(frame: av.VideoFrame) -> np.ndarray:
            converted.append(1)
            return convert(frame)
        return counting

    monkeypatch.setattr(decode_module, "all_frames", counting_frames)
    monkeypatch.setattr(decode_module, "_converter", counting_converter)
    return decoded, converted


def test_a_decoding_error_repeats_the_last_good_frame(media: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_test_video(media / "breaks.mkv", num_frames=FRAMES, gop=6)
    all_frames = decode_module.all_frames

    def breaking(container: InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        for frame in all_frames(container, stream):
            if frame.pts is not None and frame.pts >= 20 * 1000 // 16:  # frame 20 on
                raise av.error.InvalidDataError(1094995529, "Invalid data found")
            yield frame

    monkeypatch.setattr(decode_module, "all_frames", breaking)
    assert numbers(read_video_frames(path, [14, 18, 22, 26])) == [14, 18, 19, 19]
    with pytest.raises(DecodeError, match=r"breaks\.mkv: none of frames 22\.\.26 decodes "
                                          r"\(decoding stopped after frame 19: .*Invalid data"):
        read_video_frames(path, [22, 26])


def test_reading_resizes_the_short_side_in_the_decoder(media: Path) -> None:
    path = write_test_video(media / "resize.mp4", num_frames=12, width=96, height=64, gop=4)
    clip = read_video_frames(path, [1, 9, 5], short_side=32)
    assert clip.shape == (3, 32, 48, 3)
    assert numbers(clip, 12) == [1, 9, 5]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_turns_frames_upright(media: Path, suffix: str, rotation: int) -> None:
    codec = "mpeg4" if suffix == ".mov" else "libx264"
    path = write_test_video(media / f"rot{rotation}{suffix}", num_frames=10, width=64,
                            height=48, rotation=rotation, codec=codec, gop=4)
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (rotation, 64, 48)
    stored = decode_all(path)[0].shape
    assert stored == ((64, 48, 3) if rotation in (90, 270) else (48, 64, 3))
    clip = read_video_frames(path, [7, 2], rotation=info.rotation, short_side=24)
    assert clip.shape == (2, 24, 32, 3)
    assert numbers(clip, 10) == [7, 2]


def test_reading_a_truncated_file_repeats_its_last_decodable_frame(media: Path) -> None:
    path = write_broken(media / "cut.mkv", "truncated")
    decodable = len(decode_all(path))
    assert 0 < decodable < 64
    clip = read_video_frames(path, [decodable - 2, decodable + 3, 63])
    last = decodable - 1
    assert numbers(clip, 64) == [decodable - 2, last, last]
    # An index that counts more frames than decode: a clip wholly past the end is an error.
    with pytest.raises(DecodeError, match=rf"cut\.mkv: none of frames {decodable}\.\.63 "):
        read_video_frames(path, [decodable, 63])


@pytest.mark.parametrize("kind", ["empty", "not_video", "no_video_stream"])
def test_reading_unusable_files_raises_decode_error(media: Path, kind: str) -> None:
    path = write_broken(media / f"unusable-{kind}.mp4", kind)
    with pytest.raises(DecodeError, match=rf"unusable-{kind}\.mp4"):
        read_video_frames(path, [0, 2])


def test_reading_rejects_bad_indices_and_rotations(media: Path) -> None:
    path = write_test_video(media / "args.mp4", num_frames=4)
    with pytest.raises(ValueError, match="frame indices"):
        read_video_frames(path, [])
    with pytest.raises(ValueError, match="frame indices"):
        read_video_frames(path, [2, -1])
    with pytest.raises(ValueError, match="rotation 45 is not one of"):
        read_video_frames(path, [0], rotation=45)


# --- on the synthetic writer's videos (grey ramps) -------------------------------------------

def test_read_takes_strided_frames_and_pads_with_the_last(tmp_path: Path) -> None:
    path = write_ramp(tmp_path / "ramp.mp4", 10)
    clip = read_video_frames(path, clip_indices(10, start=1, num_frames=6, stride=2))
    assert clip.dtype == np.uint8 and clip.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(levels(clip), [8, 24, 40, 56, 72, 72], atol=CODEC_TOLERANCE)


def test_read_past_the_end_repeats_the_last_frame(tmp_path: Path) -> None:
    path = write_ramp(tmp_path / "ramp.mp4", 10)
    np.testing.assert_allclose(levels(read_video_frames(path, [8, 20, 21])), [64, 72, 72],
                               atol=CODEC_TOLERANCE)
    with pytest.raises(DecodeError, match=r"ramp\.mp4: none of frames 20\.\.22 decodes "
                                          r"\(the video ends at frame 9\)"):
        read_video_frames(path, [20, 21, 22])


def test_read_the_mpeg4_fallback(tmp_path: Path) -> None:
    path = write_ramp(tmp_path / "ramp.avi", 10, codec="mpeg4")
    np.testing.assert_allclose(levels(read_video_frames(path, [0, 3, 6, 9])), [0, 24, 48, 72],
                               atol=CODEC_TOLERANCE)
