"""Video folders on disk, clip decoding with PyAV, and a clip dataset for training and evaluation.

A video folder is laid out as ``<root>/<split>/<class>/<video>.<ext>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from torch.utils.data import Dataset

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")

# Training resizes the short side to crop_size * 8/7 before a random crop (as 256 -> 224).
_RESIZE_RATIO = 8 / 7


@dataclass(frozen=True)
class VideoRecord:
    path: Path
    label: int


def scan_video_folder(root: Path, split: str, classes: Sequence[str] | None = None
                      ) -> tuple[list[str], list[VideoRecord]]:
    """Class names and one record per video of ``<root>/<split>``, sorted by path.

    Classes are the sorted class folders unless ``classes`` fixes them (and their labels, in
    order); folders not named then are ignored.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise ValueError(f"split folder {split_dir} does not exist "
                         "(expected <root>/<split>/<class>/<video>)")
    if classes is None:
        names = sorted(p.name for p in split_dir.iterdir()
                       if p.is_dir() and not p.name.startswith("."))
    else:
        names = list(classes)
        _check_declared_classes(split_dir, names)
    records = [VideoRecord(path, label) for label, name in enumerate(names)
               for path in (split_dir / name).iterdir() if _is_video(path)]
    if not records:
        raise ValueError(f"split folder {split_dir} holds no videos (extensions: "
                         f"{', '.join(VIDEO_EXTENSIONS)}) in <class>/ subfolders")
    return names, sorted(records, key=lambda record: record.path)


def _check_declared_classes(split_dir: Path, names: list[str]) -> None:
    if not names:
        raise ValueError("The value of `classes` is empty, but must name at least one class")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"The value of `classes` repeats {', '.join(duplicates)}, but class "
                         "names must be unique")
    for name in names:
        if not (split_dir / name).is_dir():
            raise ValueError(f"class folder {split_dir / name} does not exist, but class "
                             f"{name!r} is declared in `classes`")


def _is_video(path: Path) -> bool:
    # Hidden files include macOS "._name.mp4" resource forks, which are not videos.
    return (path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS
            and not path.name.startswith("."))


def read_clip(path: Path, start: int, num_frames: int, stride: int) -> np.ndarray:
    """Frames ``start, start + stride, ...`` (``num_frames`` of them) as uint8 RGB (T, H, W, 3).

    A video too short for the clip is padded by repeating its last frame. Decoding stops at
    the last frame the clip needs.
    """
    if start < 0 or num_frames < 1 or stride < 1:
        raise ValueError(f"clip start={start}, num_frames={num_frames}, stride={stride} is "
                         "invalid: need start >= 0, num_frames >= 1, stride >= 1")
    last_needed = start + (num_frames - 1) * stride
    # One converter for the whole clip: a fresh one per frame (what VideoFrame.to_ndarray does)
    # costs more than decoding these small frames. Decoder threads stay at PyAV's default:
    # thread_type "AUTO" (frame threads) was slower on short, small videos.
    reformatter = VideoReformatter()
    frames: list[np.ndarray] = []
    last: av.VideoFrame | None = None
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(_video_stream(container, path))):
            last = frame
            if index >= start and (index - start) % stride == 0:
                frames.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
            if index >= last_needed:
                break
        if last is None:
            raise ValueError(f"video {path} has no decodable frames")
        if len(frames) < num_frames:
            padding = reformatter.reformat(last, format="rgb24").to_ndarray()
            frames += [padding] * (num_frames - len(frames))
    return np.stack(frames)


def count_frames(path: Path) -> int:
    """Frames in the first video stream: the container's count, else decoded and counted."""
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.frames > 0:
            return stream.frames
        return sum(1 for _ in container.decode(stream))


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise ValueError(f"file {path} has no video stream")
    return container.streams.video[0]


class VideoClipDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Clips of ``num_frames`` frames, ``stride`` apart, as normalised float32 [3, T, H, W].

    Training draws one clip per video per item: a random start, a short-side resize to
    ``crop_size * 8/7``, a random square crop and a random horizontal flip. Evaluation takes
    ``clips_per_video`` clips per video with starts spread evenly over it (one clip is the
    centre clip), resized the same way and centre-cropped. Items are (clip, label, video
    index), so that clip scores can be averaged per video.

    Training randomness comes from torch's global RNG (mixed with ``seed``): reproducible under
    ``torch.manual_seed`` and different in every DataLoader worker and epoch.
    """

    def __init__(self, records: Sequence[VideoRecord], *, num_frames: int, stride: int,
                 crop_size: int, train: bool, clips_per_video: int = 1,
                 mean: Sequence[float] = (0.45, 0.45, 0.45),
                 std: Sequence[float] = (0.225, 0.225, 0.225), seed: int = 0) -> None:
        _check_dataset_arguments(records, num_frames, stride, crop_size, clips_per_video, mean,
                                 std)
        self.records = list(records)
        self.num_frames, self.stride, self.crop_size = num_frames, stride, crop_size
        self.train, self.clips_per_video, self.seed = train, clips_per_video, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
        # Filled lazily: scanning every file up front would cost a full pass before training.
        self._frame_counts: list[int | None] = [None] * len(self.records)

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
        frames = read_clip(self.records[video].path, start, self.num_frames, self.stride)
        clip_tensor = self._transform(torch.from_numpy(frames), rng)
        return clip_tensor, self.records[video].label, video

    def _last_start(self, video: int) -> int:
        count = self._frame_counts[video]
        if count is None:
            count = self._frame_counts[video] = count_frames(self.records[video].path)
        return max(count - ((self.num_frames - 1) * self.stride + 1), 0)

    def _transform(self, frames: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> resized, cropped, maybe flipped, normalised (3, T, S, S)."""
        clip = frames.permute(0, 3, 1, 2).float().div_(255)  # (T, 3, H, W) for interpolate
        clip = _resize_short_side(clip, round(self.crop_size * _RESIZE_RATIO))
        top, left = _crop_corner(clip.shape[-2], clip.shape[-1], self.crop_size, rng)
        clip = clip[..., top:top + self.crop_size, left:left + self.crop_size]
        if rng is not None and rng.random() < 0.5:
            clip = clip.flip(-1)
        return ((clip.permute(1, 0, 2, 3) - self.mean) / self.std).contiguous()


def _crop_corner(height: int, width: int, size: int, rng: np.random.Generator | None
                 ) -> tuple[int, int]:
    """Top-left corner of a square crop: centred, or uniformly random when ``rng`` is given."""
    if rng is None:
        return (height - size) // 2, (width - size) // 2
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def _resize_short_side(clip: torch.Tensor, short_side: int) -> torch.Tensor:
    height, width = clip.shape[-2:]
    if min(height, width) == short_side:
        return clip
    scale = short_side / min(height, width)
    size = (max(short_side, round(height * scale)), max(short_side, round(width * scale)))
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


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
