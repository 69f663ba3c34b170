"""Training throughput of one distillation trial on one GPU: from the clip cache, against the
student-only limit, and with several trials packed on the GPU.

Run ``python benchmarks/gpu.py --help``; docs/gpu.md says how to run it on a GPU machine. It
needs neither Ray nor MLflow: it imports only the training code (kdsearch.train, .models,
.data, .config), as the trial does without Ray. It writes (once, then reuses) under the temp
dir a synthetic set (4 classes, ``--videos-per-class`` training videos, by default 128x128 and
40 frames), the teacher of ``kdsearch.train.teacher.prepare_teacher`` without fine-tuning
(``teacher.epochs: 0``: the teacher's accuracy changes no timing) and the clip cache of
``kdsearch.train.cache.prepare_cache``, built by the teacher on the device. Nothing is
downloaded: teacher and student start from random weights (``weights: none``). The default
pair is search_spaces/ucf101.yaml's: its teacher ``r2plus1d_18`` (at its native 16 frames 2
apart, 112 px) and one of its students, ``r3d_18``, at its student clip (8 frames 4 apart,
112 px), batch 32.

Measured, with the student settings a trial has by default (``kd`` loss, alpha 0.5,
temperature 4, AdamW), each side after ``--warmup`` untimed steps, for ``--steps`` steps or
``--seconds`` seconds, in clips per second:

1. the cached trial: batches read from the cache as ``kdsearch.train.trial.fit`` reads them
   (``CachedTrainBatches``: the memory-mapped clips, the cached teacher logits; one epoch after
   another), trained by ``kdsearch.train.loop.train_one_epoch`` (the student's forward, the KD
   loss, backward, optimizer step, one host sync per step) on a student built, moved and laid
   out as ``fit`` does it (``build_model``, ``to_channels_last``, ``make_optimizer``). Not
   included: the per-epoch evaluation and checkpoint, which ``benchmarks/cache.py`` times;
2. the student-only limit: the same, over a few of those batches copied to the device
   beforehand and cycled (no reading, no host-to-device copy);
3. their ratio, per combination of bf16 autocast and channels-last (on and off each; a search
   on a GPU has both on). Target: >= 0.9;
4. N trials packed on one device (N = 1, 2, 4): N processes of this script (a hidden
   ``--child`` mode), started together, each training as in 1. with bf16 and channels-last
   on and ``cpu_count // N`` torch threads, as Ray would share the node's CPUs; after warming
   up they wait for each other, then each times ``--steps`` steps (or ``--seconds``). Summed
   throughput: all their clips over the span from the first timed start to the last end.
   Target: 4 trials >= 3x one.

On the CPU, kdsearch.train.loop ignores bf16 and channels-last (autocast and the channels-last
layout are CUDA only): the four combinations then run the same code, four times.

``--smoke``: the same code paths on the CPU with tiny models (small3d teacher, tiny3d
student), clips of 4 frames of 32x32 and a few steps, N = 1, 2 only: a check that it runs,
not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.config import SpaceConfig  # noqa: E402
from kdsearch.config.load import load_space  # noqa: E402
from kdsearch.data.dataset import load_dataset, prepare_data  # noqa: E402
from kdsearch.models import build_model  # noqa: E402
from kdsearch.testing import wait_for_each_other, write_tiny_space  # noqa: E402
from kdsearch.text import format_table, plural  # noqa: E402
from kdsearch.train.cache import CachedTrainBatches, ClipCache, prepare_cache  # noqa: E402
from kdsearch.train.loop import (  # noqa: E402
    Batch,
    make_optimizer,
    to_channels_last,
    train_one_epoch,
)
from kdsearch.train.losses import Distillation  # noqa: E402
from kdsearch.train.teacher import prepare_teacher  # noqa: E402

CACHED_TARGET = 0.9  # cached trial / student-only limit, per combination
PACKED_TARGET = 3.0  # summed throughput of 4 packed trials / one trial
LIMIT_BATCHES = 8  # distinct batches the limit holds on the device and cycles
COMBINATIONS = ((False, False), (False, True), (True, False), (True, True))  # (bf16, CL)

#: --smoke: tiny models, clips and set, a few steps, N = 1, 2, on the CPU; well under a minute.
SMOKE = {"teacher": "small3d", "student": "tiny3d", "device": "cpu", "videos_per_class": 2,
         "val_per_class": 1, "video_size": 32, "video_frames": 16, "num_frames": 4,
         "stride": 2, "crop_size": 32, "views": 1, "batch_size": 4, "warmup": 2, "steps": 20,
         "packed": [1, 2], "workers": 0}


@dataclasses.dataclass(frozen=True)
class Speed:
    """Timed training steps: how many clips in how long, and when (wall clock, so that the
    spans of separate processes can be put together)."""

    clips: int
    steps: int
    seconds: float
    clips_per_s: float
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class Combination:
    bf16: bool
    channels_last: bool
    cached: Speed
    limit: Speed
    ratio: float  # cached / limit


@dataclasses.dataclass(frozen=True)
class Packed:
    trials: int
    per_trial: list[Speed]
    summed_clips_per_s: float
    vs_one: float  # summed throughput / that of one trial alone


@dataclasses.dataclass(frozen=True)
class Budget:
    warmup: int
    steps: int | None
    seconds: float | None


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.child:
        _child(json.loads(args.child))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda needs a GPU and torch sees none; run it on a GPU machine, "
              "or pass --device cpu to force the CPU (--smoke: a tiny check on the CPU)",
              file=sys.stderr)
        raise SystemExit(2)
    if args.smoke and args.root is None:
        with tempfile.TemporaryDirectory(prefix="kdsearch-gpu-smoke-") as tmp:
            _run(args, device, Path(tmp))
        return
    _run(args, device, args.root or Path(tempfile.gettempdir()) / (
        f"kdsearch-gpu-bench-{args.videos_per_class}x{args.val_per_class}-"
        f"{args.video_size}px-{args.video_frames}f"))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    if parser.parse_args(argv).smoke:  # the smoke settings, unless given on the command line
        parser.set_defaults(**SMOKE)
    return parser.parse_args(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module "
                                     "docstring for what each side does.")
    add = parser.add_argument
    add("--teacher", default="r2plus1d_18", help="teacher model, at its native clip, which "
        "builds the cache (default r2plus1d_18)")
    add("--student", default="r3d_18", help="student backbone (default r3d_18)")
    add("--batch-size", type=int, default=32, help="student batch size (default 32)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=100, help="timed steps per measurement "
                        "(default 100)")
    budget.add_argument("--seconds", type=float, help="timed seconds per measurement, instead "
                        "of --steps")
    add("--warmup", type=int, default=10, help="untimed steps before each measurement "
        "(default 10)")
    add("--device", default="cuda", help="torch device (default cuda; cpu forces the CPU)")
    add("--packed", type=int, nargs="+", default=[1, 2, 4], metavar="N",
        help="numbers of trials to pack on the device, the first the reference (default 1 2 4)")
    add("--num-frames", type=int, default=8, help="student clip frames (default 8)")
    add("--stride", type=int, default=4, help="student clip stride (default 4)")
    add("--crop-size", type=int, default=112, help="student clip crop (default 112)")
    add("--videos-per-class", type=int, default=32, help="training videos per class, 4 "
        "classes (default 32)")
    add("--val-per-class", type=int, default=2, help="validation videos per class (default 2)")
    add("--video-size", type=int, default=128, help="video width and height (default 128)")
    add("--video-frames", type=int, default=40, help="frames per video (default 40)")
    add("--views", type=int, default=2, help="cached views per training video (default 2)")
    add("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding worker "
        "processes of the cache build (default min(8, CPUs))")
    add("--root", type=Path, help="where the set, teacher and cache are (written there when "
        "missing; default: a folder in the temp dir named after the set's shape)")
    add("--json", type=Path, help="also write every measured value to this JSON file")
    add("--smoke", action="store_true", help="tiny settings on the CPU (small3d -> tiny3d, "
        "clips 4x32x32, 20 steps, N = 1 2) in a temporary --root removed afterwards: checks "
        "that the benchmark runs, measures nothing; other options still apply")
    add("--child", help=argparse.SUPPRESS)
    return parser


def _run(args: argparse.Namespace, device: torch.device, root: Path) -> None:
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    budget = Budget(args.warmup, None if args.seconds else args.steps, args.seconds)
    space = _space(args, device, root, cpus)
    cfg = load_space(space, cwd=space.parent)
    print(f"set and storage {root}; {_describe(args, device, budget)}", flush=True)
    cache, classes = _prepare(cfg)
    torch.set_num_threads(cpus)  # the cache build set teacher_cpus for the whole process
    if device.type == "cpu":
        print("on the CPU kdsearch.train.loop ignores bf16 and channels-last: the four "
              "combinations run the same code")
    combinations = []
    for bf16, channels_last in COMBINATIONS:
        cached = _cached_speed(cfg, cache, classes, device, bf16, channels_last, budget)
        limit = _limit_speed(cfg, cache, classes, device, bf16, channels_last, budget)
        combinations.append(Combination(bf16, channels_last, cached, limit,
                                        cached.clips_per_s / limit.clips_per_s))
        print(f"  bf16 {_on(bf16)}, channels-last {_on(channels_last)}: cached "
              f"{cached.clips_per_s:.1f} clips/s, limit {limit.clips_per_s:.1f}", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the packed trials get the device's memory
    packed = _pack(args, space, cache, classes, budget, root, cpus)
    _report(combinations, packed, device)
    print(f"whole run {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": _device_name(device), "teacher": args.teacher, "student": args.student,
            "batch_size": args.batch_size, "clip": cfg.student.clip.model_dump(),
            "budget": dataclasses.asdict(budget),
            "combinations": [dataclasses.asdict(c) for c in combinations],
            "packed": [dataclasses.asdict(p) for p in packed],
            "targets": {"cached_vs_limit": CACHED_TARGET, "packed_4_vs_1": PACKED_TARGET}},
            indent=1))
        print(f"wrote {args.json}")


def _describe(args: argparse.Namespace, device: torch.device, budget: Budget) -> str:
    timed = (plural(budget.seconds, "second") if budget.seconds
             else plural(budget.steps or 0, "step"))
    return (f"{args.teacher} -> {args.student}, student clips {args.num_frames}x"
            f"{args.crop_size}x{args.crop_size} (stride {args.stride}), batch "
            f"{args.batch_size}, {_device_name(device)}; each measurement {timed} after "
            f"{plural(budget.warmup, 'warm-up step')}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({os.cpu_count()} CPUs)"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


# --- setup --------------------------------------------------------------------------------

def _space(args: argparse.Namespace, device: torch.device, root: Path, cpus: int) -> Path:
    """The space file of the benchmark's one trial; its student settings are the defaults."""
    folder = root / "spaces" / f"{args.teacher}-{args.student}-{args.num_frames}x"
    folder = folder.with_name(f"{folder.name}{args.crop_size}s{args.stride}-v{args.views}")
    folder.mkdir(parents=True, exist_ok=True)
    return write_tiny_space(
        folder, experiment={"name": "gpu-bench"},
        data={"format": "synthetic", "root": str(root / "data"), "num_workers": args.workers,
              "synthetic": {"train_per_class": args.videos_per_class,
                            "val_per_class": args.val_per_class,
                            "num_frames": args.video_frames, "size": args.video_size,
                            "fps": 16, "seed": 0}},
        teacher={"model": args.teacher, "epochs": 0, "batch_size": args.batch_size,
                 "cache": True, "cache_views": args.views},
        student={"backbone": args.student, "epochs": 1, "batch_size": args.batch_size,
                 "clip": {"num_frames": args.num_frames, "stride": args.stride,
                          "crop_size": args.crop_size}},
        search={"space": {}, "num_samples": 1, "seed": 0, "scheduler": {"name": "none"}},
        # gpus_per_trial > 0: the teacher stage and the cache build run on the GPU.
        resources={"cpus_per_trial": cpus, "teacher_cpus": cpus,
                   "gpus_per_trial": 1 if device.type == "cuda" else 0},
        storage=str(root / "storage"))


def _prepare(cfg: SpaceConfig) -> tuple[str, int]:
    """The cache's location and the number of classes, as a search's driver prepares them."""
    def log(line: str) -> None:
        print(f"  {line}", flush=True)

    prepare_data(cfg.data)
    data = load_dataset(cfg.data, cfg.student.clip, Path(cfg.storage) / "indexes", log)
    teacher = prepare_teacher(cfg, data, log).path
    return prepare_cache(cfg, data, teacher, log), len(data.classes)


# --- timing -------------------------------------------------------------------------------

def _cached_speed(cfg: SpaceConfig, cache: str, classes: int, device: torch.device, bf16: bool,
                  channels_last: bool, budget: Budget,
                  ready: Callable[[], None] | None = None) -> Speed:
    """As ``fit`` trains from the cache: batches read from the memory-mapped cache."""
    batches = _epochs(cfg, ClipCache.open(cache))
    return _time_steps(cfg, classes, device, bf16, channels_last, batches, budget, ready)


def _limit_speed(cfg: SpaceConfig, cache: str, classes: int, device: torch.device, bf16: bool,
                 channels_last: bool, budget: Budget) -> Speed:
    """The student alone: a few of the cached trial's batches, already on the device."""
    source = _epochs(cfg, ClipCache.open(cache))
    held = [tuple(part.to(device) for part in batch)
            for batch in itertools.islice(source, LIMIT_BATCHES)]
    return _time_steps(cfg, classes, device, bf16, channels_last, itertools.cycle(held),
                       budget)


def _epochs(cfg: SpaceConfig, cache: ClipCache) -> Iterator[Batch]:
    """The cached training batches of epoch 1, 2, ... without end."""
    train = CachedTrainBatches(cache, cfg.student.batch_size, cfg.search.seed)
    for epoch in itertools.count(1):
        yield from train.epoch(epoch)


def _time_steps(cfg: SpaceConfig, classes: int, device: torch.device, bf16: bool,
                channels_last: bool, batches: Iterator[Batch], budget: Budget,
                ready: Callable[[], None] | None = None) -> Speed:
    """A student built and optimised as ``fit`` builds it, trained by ``train_one_epoch`` for
    ``budget.warmup`` untimed steps, then (after ``ready``, when given) timed steps."""
    settings = cfg.student
    torch.manual_seed(cfg.search.seed)
    student = build_model(settings.backbone, classes, settings.weights, "student")
    student = to_channels_last(student.to(device), device, channels_last)
    optimizer = make_optimizer(student.parameters(), settings.optimizer, settings.lr,
                               settings.weight_decay, settings.momentum)
    distillation = Distillation.from_student(settings)

    def train(steps: Iterable[Batch]) -> None:
        train_one_epoch(student, steps, optimizer, device, distillation=distillation,
                        bf16=bf16, channels_last=channels_last)

    train(itertools.islice(batches, budget.warmup))
    if ready is not None:
        ready()
    timed = _Timed(batches, budget)
    _synchronize(device)
    start, wall = time.perf_counter(), time.time()
    train(timed)
    _synchronize(device)  # the last optimizer step has run, not only been queued
    seconds = time.perf_counter() - start
    return Speed(timed.clips, timed.steps, seconds, timed.clips / seconds, wall, wall + seconds)


class _Timed:
    """Batches until the budget's steps are taken or its seconds have passed; counts clips."""

    def __init__(self, batches: Iterator[Batch], budget: Budget) -> None:
        self.batches, self.budget = batches, budget
        self.clips = self.steps = 0

    def __iter__(self) -> Iterator[Batch]:
        deadline = time.perf_counter() + (self.budget.seconds or float("inf"))
        while self.steps < (self.budget.steps or sys.maxsize) and (
                time.perf_counter() < deadline):
            batch = next(self.batches)
            self.clips += len(batch[1])
            self.steps += 1
            yield batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- packed trials ------------------------------------------------------------------------

def _pack(args: argparse.Namespace, space: Path, cache: str, classes: int, budget: Budget,
          root: Path, cpus: int) -> list[Packed]:
    results: list[Packed] = []
    for count in args.packed:
        speeds = _run_children(args, space, cache, classes, budget, root, count,
                               max(1, cpus // count))
        clips = sum(s.clips for s in speeds)
        summed = clips / (max(s.end for s in speeds) - min(s.start for s in speeds))
        one = results[0].summed_clips_per_s if results else summed
        results.append(Packed(count, speeds, summed, summed / one))
        print(f"  {count} packed: {summed:.1f} clips/s summed", flush=True)
    return results


def _run_children(args: argparse.Namespace, space: Path, cache: str, classes: int,
                  budget: Budget, root: Path, count: int, threads: int) -> list[Speed]:
    folder = Path(tempfile.mkdtemp(prefix=f"packed-{count}-", dir=root))
    ready = folder / "ready"
    ready.mkdir()
    job = {"space": str(space), "cache": cache, "classes": classes, "device": args.device,
           "budget": dataclasses.asdict(budget), "ready": str(ready), "count": count,
           "threads": threads}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    outputs = [folder / f"trial-{i}.out" for i in range(count)]
    procs = []
    for output in outputs:
        with output.open("w") as sink:
            procs.append(subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT))
    killed: set[int] = set()
    while any(proc.poll() is None for proc in procs):
        if any(proc.returncode for proc in procs):  # one failed: the rest would wait for it
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    killed.add(proc.pid)
        time.sleep(0.1)
    speeds = []
    # The trials that failed on their own first: their output says why.
    for proc, output in sorted(zip(procs, outputs, strict=True),
                               key=lambda pair: pair[0].pid in killed):
        text = output.read_text()
        # The last JSON line: a library may have warned on the same stream before or after.
        line = next((line for line in reversed(text.splitlines()) if line.startswith("{")),
                    None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"packed trial failed ({proc.returncode}):\n{text[-3000:]}")
        speeds.append(Speed(**json.loads(line)))
    return speeds

def _child(job: dict[str, Any]) -> None:
    """One packed trial: a cached trial with a search's GPU settings (bf16 and channels-last
    on); waits for the other trials after warming up; prints its Speed as JSON."""
    torch.set_num_threads(job["threads"])
    space = Path(job["space"])
    cfg = load_space(space, cwd=space.parent)
    speed = _cached_speed(cfg, job["cache"], job["classes"], torch.device(job["device"]),
                          cfg.student.bf16, cfg.student.channels_last, Budget(**job["budget"]),
                          ready=lambda: wait_for_each_other(Path(job["ready"]), job["count"],
                                                            timeout=600))
    print(json.dumps(dataclasses.asdict(speed)), flush=True)


# --- report -------------------------------------------------------------------------------

def _report(combinations: list[Combination], packed: list[Packed], device: torch.device
            ) -> None:
    note = "" if device.type == "cuda" else " (on the CPU: not GPU figures)"
    print(f"\ntraining throughput, clips/s{note}:")
    rows = [[_on(c.bf16), _on(c.channels_last), f"{c.cached.clips_per_s:.1f}",
             f"{c.limit.clips_per_s:.1f}", f"{c.ratio:.2f}"] for c in combinations]
    print("\n".join(format_table(["bf16", "channels-last", "cached trial",
                                  "student-only limit", "cached/limit"], rows, right=(2, 3, 4))))
    worst = min(c.ratio for c in combinations)
    print(f"target cached/limit >= {CACHED_TARGET}: "
          f"{'met' if worst >= CACHED_TARGET else 'NOT met'} (worst {worst:.2f})")
    print(f"\npacked trials (separate processes, bf16 and channels-last on), clips/s{note}:")
    rows = [[str(p.trials), ", ".join(f"{s.clips_per_s:.1f}" for s in p.per_trial),
             f"{p.summed_clips_per_s:.1f}", f"{p.vs_one:.2f}"] for p in packed]
    print("\n".join(format_table(["trials", "per trial", "summed", "vs 1 trial"], rows,
                                 right=(0, 2, 3))))
    four = next((p for p in packed if p.trials == 4), None)
    if four is None:
        print(f"target 4 packed >= {PACKED_TARGET:g}x one: not measured (no N = 4)")
    else:
        print(f"target 4 packed >= {PACKED_TARGET:g}x one: "
              f"{'met' if four.vs_one >= PACKED_TARGET else 'NOT met'} ({four.vs_one:.2f})")

if __name__ == "__main__":
    main()
