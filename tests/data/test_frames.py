"""kdsearch.data.frames: frame folders, listed in order and read frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL.JpegImagePlugin import JpegImageFile

from kdsearch.data import DecodeError, list_frames, read_frame_files
from kdsearch.testing.media import write_frame_folder

from .helpers import numbers


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
    assert numbers(clip, 12) == [11, 0, 4, 4, 11]
    assert read_frame_files(folder, [3], short_side=24).shape == (1, 24, 32, 3)
    with pytest.raises(DecodeError, match=r"v holds 12 frames, but frames 12\.\.20 are needed"):
        read_frame_files(folder, [12, 20])


def test_frame_folders_open_only_the_frames_needed(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "v", num_frames=8, name="img_{}")
    (folder / "img_3.jpg").write_bytes(b"not a jpeg")  # frame 2, not needed
    assert numbers(read_frame_files(folder, [0, 4, 7]), 8) == [0, 4, 7]
    # A needed frame that does not decode repeats the good one before it.
    assert numbers(read_frame_files(folder, [1, 2, 5]), 8) == [1, 1, 5]
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
    assert clip.shape == (1, 40, 53, 3) and numbers(clip, 2) == [1]
    assert sizes == [(64, 48)]  # libjpeg decoded at 1/4 scale, never below 40
