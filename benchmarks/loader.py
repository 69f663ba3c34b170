"""Throughput of kdsearch's training clip loader against raw PyAV and raw Pillow reading.

Run ``python benchmarks/loader.py --help``. By default it writes (once, then reuses) a set of
videos shaped like typical web video: 40 videos, 340x256, 10 s at 25 fps, H.264 (x264 at crf
23, B-frames, a keyframe every 2 s), and a copy of it as JPEG frame folders. It picks a fixed
list of training clips (video, start) with a seeded RNG and reads exactly those clips, with the
same number of processes on every side:

* raw PyAV: per clip open, seek, decode up to the last frame needed, ``to_ndarray("rgb24")``
  of the frames needed, in a multiprocessing Pool;
* kdsearch: ``DataLoader(VideoClipDataset(train=True, uint8=True), num_workers=P,
  batch_size=8)``, the whole pipeline as trials run it (decoder-side resize, random crop,
  flip, batching; clips stay uint8 and are converted to float on the training device);
* for context, naive decoding from the start of each video;

and the same for the frame folders: raw Pillow (open and convert the frames needed) against
the loader. It prints clips/s for each and the loader / raw ratio (the target is >= 0.8).

Records carry their frame counts, as an index would, so the loader does not probe videos.
Raw workers return only the clip's shape (shipping full frames back would slow the raw side
down); the loader ships its batches through shared memory as in training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.data import VideoClipDataset, VideoRecord, list_frames  # noqa: E402

Clip = tuple[int, int]  # (video, start)


@dataclass(frozen=True)
class SetShape:
    videos: int
    width: int
    height: int
    seconds: float
    fps: int
    keyframe_seconds: float

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)


#: --smoke: a tiny set and a few clips through every side, in seconds.
SMOKE = {"videos": 4, "width": 64, "height": 48, "seconds": 2, "fps": 8,
         "keyframe_seconds": 1, "clips": 16, "num_frames": 4, "stride": 2, "crop_size": 32,
         "workers": 1, "batch_size": 4, "repeats": 1}


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    if parser.parse_args(argv).smoke:  # the smoke settings, unless given on the command line
        parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
    shape = SetShape(args.videos, args.width, args.height, args.seconds, args.fps,
                     args.keyframe_seconds)
    if args.smoke and args.root is None:
        with tempfile.TemporaryDirectory(prefix="kdsearch-loader-smoke-") as tmp:
            _run(args, shape, Path(tmp))
        return
    _run(args, shape, args.root or Path(tempfile.gettempdir()) / (
        f"kdsearch-loader-bench-{shape.videos}x{shape.width}x{shape.height}-"
        f"{shape.seconds:g}s-{shape.fps}fps-k{shape.keyframe_seconds:g}"))


def _run(args: argparse.Namespace, shape: SetShape, root: Path) -> None:
    videos, folders = _prepare(root, shape)
    span = (args.num_frames - 1) * args.stride + 1
    rng = np.random.default_rng(args.seed)
    clips = [(int(v), int(rng.integers(0, shape.frames - span + 1)))
             for v in rng.integers(0, len(videos), args.clips)]
    print(f"set {root}: {len(videos)} videos {shape.width}x{shape.height}, {shape.frames} "
          f"frames at {shape.fps} fps, keyframe every {shape.keyframe_seconds:g} s; "
          f"{len(clips)} clips of {args.num_frames} frames stride {args.stride}, crop "
          f"{args.crop_size}; {args.workers} processes; best of {args.repeats}")
    _warm_page_cache([*videos, *(f for folder in folders for f in folder.iterdir())])
    shape_args = {"num_frames": args.num_frames, "stride": args.stride,
                  "crop_size": args.crop_size}
    video_records = [VideoRecord(p, 0, shape.frames) for p in videos]
    frame_records = [VideoRecord(p, 0, shape.frames, "frames") for p in folders]
    frame_lists = [[str(f) for f in list_frames(p)] for p in folders]
    video_jobs = [(str(videos[v]), s) for v, s in clips]
    sides = {
        "raw PyAV (seek)": _pool_side(_raw_pyav, video_jobs, args, shape),
        "kdsearch loader, video": _loader_side(video_records, clips, shape_args, args),
        "raw Pillow": _pool_side(_raw_pillow, [(frame_lists[v], s) for v, s in clips], args,
                                 shape),
        "kdsearch loader, frames": _loader_side(frame_records, clips, shape_args, args),
    }
    if not args.skip_naive:
        sides["naive PyAV (from start)"] = _pool_side(_naive_pyav, video_jobs, args, shape)
    with contextlib.ExitStack() as stack:
        runs = {name: stack.enter_context(side) for name, side in sides.items()}
        _report(_measure(runs, args.repeats, len(clips)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module "
                                     "docstring for what each side does.")
    add = parser.add_argument
    add("--root", type=Path, help="where the set is (written there when missing; default: a "
        "folder in the temp dir named after the set's shape)")
    add("--videos", type=int, default=40, help="videos in the set (default 40)")
    add("--width", type=int, default=340, help="frame width (default 340)")
    add("--height", type=int, default=256, help="frame height (default 256)")
    add("--seconds", type=float, default=10, help="video length in seconds (default 10)")
    add("--fps", type=int, default=25, help="frame rate (default 25)")
    add("--keyframe-seconds", type=float, default=2, help="seconds between keyframes, as "
        "typical web video (default 2)")
    add("--clips", type=int, default=320, help="clips read per measurement (default 320)")
    add("--num-frames", type=int, default=8, help="frames per clip (default 8)")
    add("--stride", type=int, default=4, help="frames between clip frames (default 4)")
    add("--crop-size", type=int, default=64, help="loader crop size (default 64; decoded at "
        "short side crop*8/7)")
    add("--workers", type=int, default=2, help="processes on every side (default 2)")
    add("--batch-size", type=int, default=8, help="loader batch size (default 8)")
    add("--repeats", type=int, default=2, help="measurements per side; the best counts "
        "(default 2)")
    add("--seed", type=int, default=0, help="seed of the clip list (default 0)")
    add("--skip-naive", action="store_true", help="skip decoding from the start")
    add("--smoke", action="store_true", help="tiny settings (4 videos of 64x48, 2 s at 8 fps; "
        "16 clips; 1 process; 1 repeat) in a temporary --root removed afterwards: checks "
        "that the benchmark runs, measures nothing; other options still apply")
    return parser


# --- the set ------------------------------------------------------------------------------

def _prepare(root: Path, shape: SetShape) -> tuple[list[Path], list[Path]]:
    marker = root / "set.json"
    if marker.is_file() and json.loads(marker.read_text()) == asdict(shape):
        videos = sorted((root / "videos").glob("*.mp4"))
        return videos, [root / "frames" / p.stem for p in videos]
    print(f"writing the set to {root} (once) ...", flush=True)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(root / "videos" / f"v{i:03d}.mp4", root / "frames" / f"v{i:03d}", i, shape)
            for i in range(shape.videos)]
    with multiprocessing.Pool() as pool:
        pool.starmap(_write_one, jobs)
    marker.write_text(json.dumps(asdict(shape)))
    return [job[0] for job in jobs], [job[1] for job in jobs]


def _write_one(path: Path, folder: Path, seed: int, shape: SetShape) -> None:
    """A panning, textured scene with a moving blob: enough detail that decoding costs what
    it costs on real video (flat test frames decode several times faster)."""
    rng = np.random.default_rng(seed)
    texture = _texture(rng, shape.height * 2, shape.width * 2)
    gop = round(shape.keyframe_seconds * shape.fps)
    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=shape.fps, options={
            "crf": "23", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}"})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = shape.width, shape.height, "yuv420p"
        velocity = rng.uniform(-2, 2, 2)
        for index in range(shape.frames):
            image = _frame(texture, index, velocity, shape)
            Image.fromarray(image).save(folder / f"img_{index + 1:05d}.jpg", quality=90)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    smooth = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:height, :width]
    fine = rng.normal(0, 18, (height, width, 3)).astype(np.float32)
    return np.clip(smooth * 0.8 + fine + 20, 0, 255).astype(np.uint8)


def _frame(texture: np.ndarray, index: int, velocity: np.ndarray, shape: SetShape
           ) -> np.ndarray:
    height, width = shape.height, shape.width
    y = int(abs((velocity[0] * index) % (2 * height) - height))
    x = int(abs((velocity[1] * index) % (2 * width) - width))
    image = texture[y:y + height, x:x + width].copy()
    cy = int(height / 2 + height / 3 * np.sin(index / 9))
    cx = int(width / 2 + width / 3 * np.cos(index / 13))
    image[max(cy - 20, 0):cy + 20, max(cx - 14, 0):cx + 14] = (230, 200, 40)
    return image


def _warm_page_cache(paths: Sequence[Path]) -> None:
    for path in paths:
        path.read_bytes()


# --- the readers --------------------------------------------------------------------------

_ARGS: argparse.Namespace | None = None


def _init_worker(args: argparse.Namespace) -> None:
    global _ARGS
    _ARGS = args


def _needed(start: int) -> list[int]:
    assert _ARGS is not None
    return [start + k * _ARGS.stride for k in range(_ARGS.num_frames)]


def _raw_pyav(job: tuple[str, int]) -> tuple[int, ...]:
    path, start = job
    needed = _needed(start)
    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert stream.average_rate and stream.time_base
        ticks = 1 / (stream.average_rate * stream.time_base)
        container.seek(int(start * ticks), stream=stream, backward=True)
        for frame in container.decode(stream):
            index = round((frame.pts or 0) / ticks)
            if index in needed:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= needed[-1]:
                break
    return np.stack(frames).shape


def _naive_pyav(job: tuple[str, int]) -> tuple[int, ...]:
    path, start = job
    needed = _needed(start)
    frames = []
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in needed:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= needed[-1]:
                break
    return np.stack(frames).shape


def _raw_pillow(job: tuple[list[str], int]) -> tuple[int, ...]:
    files, start = job
    frames = []
    for index in _needed(start):
        with Image.open(files[index]) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames).shape


@contextlib.contextmanager
def _pool_side(reader: Callable[[Any], tuple[int, ...]], jobs: list[Any],
               args: argparse.Namespace, shape: SetShape) -> Iterator[Callable[[], int]]:
    """A warmed-up Pool of ``args.workers`` and a function that runs all ``jobs`` on it."""
    expected = (args.num_frames, shape.height, shape.width, 3)
    with multiprocessing.Pool(args.workers, _init_worker, (args,)) as pool:
        def run() -> int:
            shapes = pool.map(reader, jobs, chunksize=args.batch_size)
            assert all(s == expected for s in shapes), shapes[0]
            return len(shapes)

        pool.map(reader, jobs[:_warm_up(args)], chunksize=1)
        yield run


def _warm_up(args: argparse.Namespace) -> int:
    return 2 * args.workers * args.batch_size


class _FixedClips(Dataset[tuple[torch.Tensor, int, int]]):
    """The training dataset's clips at the benchmark's fixed starts (random crop and flip)."""

    def __init__(self, dataset: VideoClipDataset, clips: list[Clip]) -> None:
        self.dataset, self.clips = dataset, clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        video, start = self.clips[index]
        rng = np.random.default_rng([self.dataset.seed, index])
        return self.dataset.clip(video, start, rng), self.dataset.records[video].label, video


class _Indices(Sampler[int]):
    """A sampler whose indices can change between epochs (the workers persist)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@contextlib.contextmanager
def _loader_side(records: list[VideoRecord], clips: list[Clip], shape_args: dict[str, int],
                 args: argparse.Namespace) -> Iterator[Callable[[], int]]:
    """A warmed-up DataLoader with persistent workers, as training uses, and a function that
    reads all ``clips`` with it."""
    dataset = VideoClipDataset(records, train=True, num_frames=shape_args["num_frames"],
                               stride=shape_args["stride"], crop_size=shape_args["crop_size"],
                               uint8=True)  # as kdsearch.data.dataset.make_loaders builds it
    sampler = _Indices(list(range(_warm_up(args))))
    loader = DataLoader(_FixedClips(dataset, clips), batch_size=args.batch_size,
                        num_workers=args.workers, sampler=sampler, persistent_workers=True)

    def run() -> int:
        count = 0
        for batch, _, _ in loader:
            assert batch.shape[1:] == (3, args.num_frames, args.crop_size, args.crop_size)
            count += len(batch)
        return count

    run()
    sampler.indices = list(range(len(clips)))
    yield run


# --- measuring ----------------------------------------------------------------------------

def _measure(runs: dict[str, Callable[[], int]], repeats: int, clips: int
             ) -> dict[str, list[float]]:
    """clips/s of every run, ``repeats`` times, interleaved so that a burst of load from
    elsewhere does not land on one side only."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            count = run()
            elapsed = time.perf_counter() - started
            assert count == clips, (name, count)
            rates[name].append(count / elapsed)
            print(f"  {name:26s} {count / elapsed:8.1f} clips/s", flush=True)
    return rates


def _report(rates: dict[str, list[float]]) -> None:
    best = {name: max(values) for name, values in rates.items()}
    print("\nbest of each:")
    for name, rate in best.items():
        print(f"  {name:26s} {rate:8.1f} clips/s   (all: "
              f"{', '.join(f'{r:.1f}' for r in rates[name])})")
    print(f"\nloader / raw PyAV:  {best['kdsearch loader, video'] / best['raw PyAV (seek)']:.2f}")
    print(f"loader / raw Pillow: {best['kdsearch loader, frames'] / best['raw Pillow']:.2f}")


if __name__ == "__main__":
    main()
