"""Tests for seeking clip decoding, frame folders, the media probe and the clip dataset on them.

Test videos come from kdsearch.testing.media: every frame shows its own number, so a test can
tell exactly which frames a reader returned, and that they are upright.
"""

from __future__ import annotations

import pickle
import random
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest
import torch
from av.container import InputContainer
from PIL.JpegImagePlugin import JpegImageFile

from kdsearch.data import (
    DecodeError,
    VideoClipDataset,
    VideoRecord,
    clip_indices,
    list_frames,
    probe_frames,
    probe_video,
    read_frame_files,
    read_video_frames,
)
from kdsearch.data import decode as decode_module
from kdsearch.data import probe as probe_module
from kdsearch.data import video as video_module
from kdsearch.testing import media as testmedia
from kdsearch.testing.media import (
    frame_number_of,
    write_broken,
    write_frame_folder,
    write_test_video,
)

FRAMES = 40
# (suffix, codec): every container the readers must seek in exactly. The mpeg4 ones have
# B-frames coded before their keyframe; AVI stores no presentation timestamps; h264 in AVI
# has timestamps that cannot place frames at all (read by decoding from the start).
CODECS = [(".mp4", "libx264"), (".mkv", "libx264"), (".webm", "libvpx-vp9"),
          (".webm", "libvpx"), (".avi", "mpeg4"), (".mov", "mpeg4"), (".mov", "mjpeg"),
          (".mkv", "mpeg4"), (".avi", "libx264")]


def _decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _numbers(frames: np.ndarray, num_frames: int = FRAMES) -> list[int]:
    return [frame_number_of(frame, num_frames) for frame in frames]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module", params=CODECS, ids=lambda c: f"{c[0][1:]}-{c[1]}")
def coded(request: pytest.FixtureRequest, media: Path) -> tuple[Path, list[np.ndarray]]:
    """A 40-frame video with a keyframe every 6 frames, and its frames decoded from the start."""
    suffix, codec = request.param
    path = write_test_video(media / f"seek-{codec}{suffix}", num_frames=FRAMES, codec=codec,
                            gop=6)
    return path, _decode_all(path)


# --- test media ---------------------------------------------------------------------------

def test_test_videos_show_their_frame_numbers(coded: tuple[Path, list[np.ndarray]]) -> None:
    _, truth = coded
    assert _numbers(np.stack(truth)) == list(range(FRAMES))


def test_frame_number_of_refuses_a_turned_or_mirrored_frame() -> None:
    frame = testmedia.frame_image(37, 64, 48)
    assert frame_number_of(frame, 40) == 37
    for turned in (np.rot90(frame), frame[:, ::-1], frame[::-1]):
        with pytest.raises(ValueError, match="marker is at the"):
            frame_number_of(turned, 40)
    with pytest.raises(ValueError, match="number 37 is out of range for 30 frames"):
        frame_number_of(frame, 30)


# --- read_video_frames ---------------------------------------------------------------------

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
    assert _numbers(read_video_frames(path, [33, 35, 33])) == [33, 35, 33]
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
    assert _numbers(read_video_frames(path, [14, 18, 22, 26])) == [14, 18, 19, 19]
    with pytest.raises(DecodeError, match=r"breaks\.mkv: none of frames 22\.\.26 decodes "
                                          r"\(decoding stopped after frame 19: .*Invalid data"):
        read_video_frames(path, [22, 26])


def test_reading_resizes_the_short_side_in_the_decoder(media: Path) -> None:
    path = write_test_video(media / "resize.mp4", num_frames=12, width=96, height=64, gop=4)
    clip = read_video_frames(path, [1, 9, 5], short_side=32)
    assert clip.shape == (3, 32, 48, 3)
    assert _numbers(clip, 12) == [1, 9, 5]


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_turns_frames_upright(media: Path, suffix: str, rotation: int) -> None:
    codec = "mpeg4" if suffix == ".mov" else "libx264"
    path = write_test_video(media / f"rot{rotation}{suffix}", num_frames=10, width=64,
                            height=48, rotation=rotation, codec=codec, gop=4)
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (rotation, 64, 48)
    stored = _decode_all(path)[0].shape
    assert stored == ((64, 48, 3) if rotation in (90, 270) else (48, 64, 3))
    clip = read_video_frames(path, [7, 2], rotation=info.rotation, short_side=24)
    assert clip.shape == (2, 24, 32, 3)
    assert _numbers(clip, 10) == [7, 2]


def test_reading_a_truncated_file_repeats_its_last_decodable_frame(media: Path) -> None:
    path = write_broken(media / "cut.mkv", "truncated")
    decodable = len(_decode_all(path))
    assert 0 < decodable < 64
    clip = read_video_frames(path, [decodable - 2, decodable + 3, 63])
    last = decodable - 1
    assert _numbers(clip, 64) == [decodable - 2, last, last]
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


def test_clip_indices_pad_short_videos_with_the_last_frame() -> None:
    assert clip_indices(100, 10, 4, 3) == [10, 13, 16, 19]
    assert clip_indices(5, 1, 4, 2) == [1, 3, 4, 4]
    assert clip_indices(1, 0, 3, 2) == [0, 0, 0]
    with pytest.raises(ValueError, match="video_frames=0"):
        clip_indices(0, 0, 4, 1)


# --- probe_video ---------------------------------------------------------------------------

def test_probe_counts_every_codec_exactly(coded: tuple[Path, list[np.ndarray]]) -> None:
    path, truth = coded
    info = probe_video(path)
    assert (info.status, info.reason, info.num_frames) == ("ok", "", len(truth))
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == 16 and info.duration == pytest.approx(FRAMES / 16)


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
    assert _numbers(read_video_frames(odd, [8, 3]), 9) == [8, 3]


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


# --- frame folders -------------------------------------------------------------------------

def test_list_frames_orders_by_the_last_number(tmp_path: Path) -> None:
    names = ["img_10.jpg", "img_2.jpg", "img_1.png", "frame_3.jpeg", "v2_img_4.JPG",
             "cover.jpg", ".img_0.jpg", "notes.txt", "b_5.jpg", "a_5.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub_6.jpg").mkdir()
    assert [p.name for p in list_frames(tmp_path)] == [
        "img_1.png", "img_2.jpg", "frame_3.jpeg", "v2_img_4.JPG", "a_5.jpg", "b_5.jpg",
        "img_10.jpg", "cover.jpg"]


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_frame_folders_read_the_frames_asked_for(tmp_path: Path, ext: str) -> None:
    folder = write_frame_folder(tmp_path / "v", num_frames=12, ext=ext)
    clip = read_frame_files(folder, [11, 0, 4, 4, 30])
    assert clip.shape == (5, 48, 64, 3) and clip.dtype == np.uint8
    assert _numbers(clip, 12) == [11, 0, 4, 4, 11]
    assert read_frame_files(folder, [3], short_side=24).shape == (1, 24, 32, 3)
    with pytest.raises(DecodeError, match=r"v holds 12 frames, but frames 12\.\.20 are needed"):
        read_frame_files(folder, [12, 20])


def test_frame_folders_open_only_the_frames_needed(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "v", num_frames=8, name="img_{}")
    (folder / "img_3.jpg").write_bytes(b"not a jpeg")  # frame 2, not needed
    assert _numbers(read_frame_files(folder, [0, 4, 7]), 8) == [0, 4, 7]
    # A needed frame that does not decode repeats the good one before it.
    assert _numbers(read_frame_files(folder, [1, 2, 5]), 8) == [1, 1, 5]
    with pytest.raises(DecodeError, match=r"frame folder .*v: none of frames 2\.\.2 decodes "
                                          r"\(img_3\.jpg: "):
        read_frame_files(folder, [2])


def test_frame_folders_decode_jpeg_at_a_reduced_scale(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_frame_folder(tmp_path / "v", num_frames=2, width=256, height=192)
    sizes: list[tuple[int, int]] = []
    draft = JpegImageFile.draft

    def recording(self: JpegImageFile, mode: str | None,
                  size: tuple[int, int] | None) -> object:
        result = draft(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", recording)
    clip = read_frame_files(folder, [1], short_side=40)
    assert clip.shape == (1, 40, 53, 3) and _numbers(clip, 2) == [1]
    assert sizes == [(64, 48)]  # libjpeg decoded at 1/4 scale, never below 40


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


# --- VideoClipDataset on videos and frame folders ------------------------------------------

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


def _clip_numbers(clip: torch.Tensor, num_frames: int) -> list[int]:
    # mean 0 and std 1 keep values in [0, 1]: back to uint8 images.
    frames = (clip.permute(1, 2, 3, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return _numbers(frames, num_frames)


def test_dataset_items_for_videos_and_frame_folders(records: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(records, num_frames=4, stride=3, crop_size=40, train=False,
                               clips_per_video=2, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(dataset) == 8
    # 20 frames, a 10-frame span: starts 0..10 in two segments -> 2 and 7.
    expected = {0: [2, 5, 8, 11], 1: [7, 10, 13, 16], 2: [2, 5, 8, 11], 3: [7, 10, 13, 16],
                4: [0, 2, 2, 2], 5: [0, 2, 2, 2], 6: [2, 5, 8, 11], 7: [7, 10, 13, 16]}
    for index, numbers in expected.items():
        clip, label, video = dataset[index]
        assert clip.shape == (3, 4, 40, 40) and clip.dtype == torch.float32
        assert (label, video) == (index // 2, index // 2)
        count = 3 if video == 2 else 20
        # A 40-pixel centre crop of the 64x48 frame resized to short side 46 keeps the marker
        # (the top-left third) inside it.
        assert _clip_numbers(clip, count) == numbers, index


def test_dataset_training_items_and_a_dataloader(records: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(records, num_frames=4, stride=2, crop_size=32, train=True)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0)
    clips, labels, videos = next(iter(loader))
    assert clips.shape == (2, 3, 4, 32, 32)
    assert labels.tolist() == [0, 1] and videos.tolist() == [0, 1]
    assert pickle.loads(pickle.dumps(dataset)).records == records


def test_dataset_clip_takes_a_given_start(records: list[VideoRecord]) -> None:
    dataset = VideoClipDataset(records, num_frames=3, stride=4, crop_size=40, train=True,
                               mean=(0, 0, 0), std=(1, 1, 1))
    assert _clip_numbers(dataset.clip(1, 9, None), 20) == [9, 13, 17]
    assert _clip_numbers(dataset.clip(0, 15, None), 20) == [15, 19, 19]


def test_dataset_probes_a_record_without_a_count_once(
        records: list[VideoRecord], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    probe_video_ = probe_module.probe_video

    def counting(path: Path) -> probe_module.MediaInfo:
        calls.append(path)
        return probe_video_(path)

    monkeypatch.setattr(probe_module, "probe_video", counting)
    dataset = VideoClipDataset(records, num_frames=2, stride=1, crop_size=32, train=False)
    for index in range(len(dataset)):
        dataset[index]
        dataset[index]
    assert calls == [records[2].path]


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
