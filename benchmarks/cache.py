"""Per-epoch time and memory of a distillation trial: online, from the clip cache, and the limit.

Run ``python benchmarks/cache.py --help``; its defaults reproduce the README's numbers. It
writes (once, then reuses) under the temp dir a synthetic set (4 classes, 16 training and 4
validation videos per class, 128x128, 32 frames at 16 fps), and per teacher/student pair a
teacher (``--teacher-epochs``, default 0: the teacher's accuracy does not change any timing)
and the clip cache of ``kdsearch.train.cache.prepare_cache``. Everything runs on the CPU with
``torch.set_num_threads(--threads)`` in every measured process.

Time, for every pair (default r3d_18 -> tiny3d and x3d_m -> x3d_xs), in this process, one
side after the other, each training the same student setup (clips of 8 frames at stride 2,
crop 64, batch 8, alpha 0.5, temperature 4, AdamW as the space file's defaults, seed 0):

* (a) online: ``kdsearch.train.trial.fit`` with ``cache=None``, as a trial without the cache runs:
  a DataLoader with ``--workers`` worker processes (per loader) decodes the videos and the
  teacher runs on every training batch;
* (b) cached: ``fit`` with the cache: clips from the memory-mapped ``.npy``, teacher logits
  from the Parquet table; the teacher is never loaded. The cache's build (decoding every view
  and running the teacher on it) is timed on its own and not part of any epoch;
* (c) the limit: the very batches (b) reads in each epoch (the same clips in the same order
  with the same cached logits, and the same validation batches) copied into RAM beforehand,
  fed to ``kdsearch.train.loop.train_epochs`` (the loop ``fit`` runs: training, evaluation,
  scheduler step) with a student built, seeded and optimised as ``fit`` builds it, and after
  every epoch the checkpoint ``fit`` saves (``kdsearch.models.checkpoints.save_student``).

An epoch of (a) and (b) is the time between two consecutive ``report`` calls of ``fit``: the
student's forward, KD loss, backward and step over every training video once, evaluation over
every validation clip, the scheduler step and the checkpoint save. (c) times the same steps,
so the sides differ only in where clips and teacher logits come from (and, for (a), in running
the teacher). (b) and (c) train on identical data from an identical start: the script checks
that their losses are equal. Epoch 1 (model build, loader workers starting, first touches)
is warm-up; the median of the later epochs counts. Printed per pair: those medians,
(a)/(b), (b)/(c) (target <= 1.2), the cache's build time and size on disk.

Memory: the first pair at ``--mem-crop`` and ``--mem-views`` (default a 147 MB clip file, so
that the cache weighs next to a trial's own memory), trained as separate processes (this
script with a hidden ``--child`` mode: unpickle the TrialContext, set the threads, ``fit``, as
Ray's trainable does minus Ray), first one alone, then two at once reading the same cache
(with the search's seed, so the same views in the same order, as the trials of one search
read them). Every 0.1 s the parent reads ``/proc/<pid>/smaps_rollup`` of each trial process
and of its children (the online loader's workers); every second it also reads
``/proc/<pid>/smaps`` for the pages of the cache's ``.npy`` files each trial has mapped. RSS
counts every page a process maps, shared or not; PSS divides each page among the processes
that map it, so the sum of PSS over processes is what they cost the node together. Printed:
the peak RSS of each trial process, the cache's pages each maps (RSS) and their PSS summed
over the trials (the cache's size when it is held once, twice that if each trial had its own
copy), the peak of the trials' summed PSS (split into anonymous and file-backed), and summed
PSS with two trials / with one (target < 2). File-backed pages (libtorch and other libraries)
are also shared with any other process mapping the same files, this parent included, so a
lone trial's file-backed PSS is below its file-backed RSS; the anonymous part is the trials'
own. The online trial is measured the same way for comparison, over ``--mem-online-epochs``
(its teacher makes epochs slow).

Not measured: Ray's own processes and memory around a trial, and the GPU.

One script of about 600 lines, on purpose: a reader checks what was timed, how the three
sides were made equal and how memory was read in one place, next to the code that did it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.config import SpaceConfig, searched_values, trial_student  # noqa: E402
from kdsearch.config.load import load_space  # noqa: E402
from kdsearch.data.dataset import DatasetSplits, load_dataset, prepare_data  # noqa: E402
from kdsearch.models import build_model  # noqa: E402
from kdsearch.models.checkpoints import save_student  # noqa: E402
from kdsearch.testing import write_tiny_space  # noqa: E402
from kdsearch.train.cache import (  # noqa: E402
    META,
    TRAIN_CLIPS,
    VAL_CLIPS,
    CachedTrainBatches,
    CachedValBatches,
    ClipCache,
    prepare_cache,
)
from kdsearch.train.loop import (  # noqa: E402
    make_optimizer,
    pick_device,
    to_channels_last,
    train_epochs,
)
from kdsearch.train.losses import Distillation  # noqa: E402
from kdsearch.train.teacher import prepare_teacher  # noqa: E402
from kdsearch.train.trial import TrialContext, fit  # noqa: E402

SAMPLED = {"alpha": 0.5, "temperature": 4.0}
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Run:
    """Seconds and training loss of every epoch of one trial."""

    seconds: list[float]
    losses: list[float]

    @property
    def epoch_seconds(self) -> float:
        return statistics.median(self.seconds[1:] or self.seconds)


@dataclasses.dataclass(frozen=True)
class PairResult:
    teacher: str
    student: str
    online: Run
    cached: Run
    limit: Run
    build_seconds: float
    built_now: bool
    cache_bytes: int


@dataclasses.dataclass(frozen=True)
class MemoryResult:
    mode: str
    trials: int
    peak_rss: list[int]  # bytes, per trial process
    peak_cache_rss: list[int]  # bytes of the cache's files mapped, per trial process
    peak_cache_pss_sum: int  # their PSS summed over the trials: the cache's size if shared
    peak_pss_sum: int  # bytes, all processes of all trials
    peak_pss_anon: int  # of peak_pss_sum: anonymous memory (heap, tensors)
    peak_pss_file: int  # of peak_pss_sum: file-backed pages (libraries, the cache)
    epoch_seconds: list[float]  # per trial


#: --smoke: a tiny set and student, every side and the memory test, in well under a minute.
SMOKE = {"pairs": [("small3d", "tiny3d")], "train_per_class": 2, "val_per_class": 1,
         "video_size": 32, "video_frames": 16, "num_frames": 4, "stride": 2, "crop_size": 16,
         "views": 1, "batch_size": 4, "epochs": 2, "build_threads": 1, "mem_crop": 16,
         "mem_views": 1, "mem_epochs": 2, "mem_online_epochs": 1}


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.child:
        _child(args.child, args.threads)
        return
    if args.smoke and args.root is None:
        with tempfile.TemporaryDirectory(prefix="kdsearch-cache-smoke-") as tmp:
            _run(args, Path(tmp))
        return
    _run(args, args.root or Path(tempfile.gettempdir()) / (
        f"kdsearch-cache-bench-{args.train_per_class}x{args.val_per_class}-"
        f"{args.video_size}px-{args.video_frames}f"))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    if parser.parse_args(argv).smoke:  # the smoke settings, unless given on the command line
        parser.set_defaults(**SMOKE)
    return parser.parse_args(argv)


def _run(args: argparse.Namespace, root: Path) -> None:
    started = time.perf_counter()
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    print(f"set and storage {root}: 4 classes x ({args.train_per_class} train + "
          f"{args.val_per_class} val) synthetic videos, {args.video_size}x{args.video_size}, "
          f"{args.video_frames} frames")
    print(f"clips {args.num_frames} frames stride {args.stride} crop {args.crop_size}; "
          f"{args.views} cached views; batch {args.batch_size}; {args.epochs} epochs (first "
          f"is warm-up); {args.threads} torch thread(s) per trial; {args.workers} loader "
          f"worker(s) per online loader; teacher epochs {args.teacher_epochs}; "
          f"alpha {SAMPLED['alpha']} temperature {SAMPLED['temperature']}; caches built with "
          f"{args.build_threads} thread(s)")
    print(f"load average before: {_load(load_before)}\n", flush=True)
    results = [_time_pair(args, root, pair) for pair in args.pairs]
    _report_times(results)
    memory: list[MemoryResult] = []
    if not args.skip_memory:
        memory, cache_bytes, clips_bytes = _memory(args, root, args.pairs[0])
        _report_memory(memory, args, args.pairs[0], cache_bytes, clips_bytes)
    print(f"\nload average after: {_load(os.getloadavg())}; whole run "
          f"{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": [dataclasses.asdict(r) for r in results],
                                         "memory": [dataclasses.asdict(m) for m in memory]},
                                        indent=1))
        print(f"wrote {args.json}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module "
                                     "docstring for what each side does.")
    add = parser.add_argument
    add("--root", type=Path, help="where the set, teachers and caches are (written there when "
        "missing; default: a folder in the temp dir named after the set's shape)")
    add("--pairs", nargs="+", type=_pair, default=[("r3d_18", "tiny3d"), ("x3d_m", "x3d_xs")],
        metavar="TEACHER:STUDENT", help="pairs to time (default r3d_18:tiny3d x3d_m:x3d_xs); "
        "the first one is also the memory test's")
    add("--train-per-class", type=int, default=16, help="training videos per class "
        "(default 16)")
    add("--val-per-class", type=int, default=4, help="validation videos per class (default 4)")
    add("--video-size", type=int, default=128, help="video width and height (default 128)")
    add("--video-frames", type=int, default=32, help="frames per video (default 32)")
    add("--num-frames", type=int, default=8, help="frames per clip (default 8)")
    add("--stride", type=int, default=2, help="frames between clip frames (default 2)")
    add("--crop-size", type=int, default=64, help="clip crop size (default 64)")
    add("--views", type=int, default=2, help="cached views per training video (default 2)")
    add("--batch-size", type=int, default=8, help="student and teacher batch size (default 8)")
    add("--epochs", type=int, default=5, help="student epochs per trial; the first is warm-up "
        "(default 5)")
    add("--teacher-epochs", type=int, default=0, help="teacher fine-tuning epochs (default 0)")
    add("--threads", type=int, default=1, help="torch threads of every trial, also the "
        "resources.cpus_per_trial (default 1)")
    add("--workers", type=int, default=1, help="data.num_workers: worker processes of each "
        "online loader and of the cache build (default 1)")
    add("--build-threads", type=int, default=2, help="torch threads of the cache build, which "
        "a search runs in its driver with resources.teacher_cpus threads (default 2)")
    add("--mem-crop", type=int, default=112, help="crop size of the memory test (default 112)")
    add("--mem-views", type=int, default=8, help="cached views of the memory test (default 8)")
    add("--mem-epochs", type=int, default=12, help="epochs of a cached trial in the memory "
        "test (default 12: most views get read)")
    add("--mem-online-epochs", type=int, default=2, help="epochs of an online trial in the "
        "memory test (default 2)")
    add("--skip-memory", action="store_true", help="time only")
    add("--skip-online-memory", action="store_true", help="measure memory of cached trials "
        "only")
    add("--json", type=Path, help="also write every measured value to this JSON file")
    add("--smoke", action="store_true", help="tiny settings (a small3d -> tiny3d pair, 8 "
        "videos of 32x32, 2 epochs, every side and the memory test) in a temporary --root "
        "removed afterwards: checks that the benchmark runs, measures nothing; other options "
        "still apply")
    add("--child", type=Path, help=argparse.SUPPRESS)
    return parser


def _pair(text: str) -> tuple[str, str]:
    teacher, sep, student = text.partition(":")
    if not sep or not teacher or not student:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TEACHER:STUDENT")
    return teacher, student


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"


# --- setup --------------------------------------------------------------------------------

def _space(args: argparse.Namespace, root: Path, pair: tuple[str, str], crop: int, views: int,
           epochs: int) -> SpaceConfig:
    teacher, student = pair
    folder = root / "spaces" / f"{teacher}-{student}-c{crop}-v{views}-e{epochs}"
    folder.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Any] = {
        "experiment": {"name": "cache-bench"},
        "data": {"format": "synthetic", "root": str(root / "data"),
                 "num_workers": args.workers,
                 "synthetic": {"train_per_class": args.train_per_class,
                               "val_per_class": args.val_per_class,
                               "num_frames": args.video_frames, "size": args.video_size,
                               "fps": 16, "seed": 0}},
        "teacher": {"model": teacher, "epochs": args.teacher_epochs,
                    "batch_size": args.batch_size, "cache": True, "cache_views": views},
        "student": {"backbone": student, "epochs": epochs, "batch_size": args.batch_size,
                    **SAMPLED, "clip": {"num_frames": args.num_frames, "stride": args.stride,
                                        "crop_size": crop}},
        "search": {"space": {}, "num_samples": 1, "seed": 0, "scheduler": {"name": "none"}},
        "resources": {"cpus_per_trial": args.threads, "gpus_per_trial": 0},
        "storage": str(root / "storage"),
    }
    return load_space(write_tiny_space(folder, **sections), cwd=folder)


@dataclasses.dataclass(frozen=True)
class Prepared:
    data: DatasetSplits
    teacher: Path | str  # the saved teacher: a file, or a URI
    location: str  # what prepare_cache returned: what trials get
    cache: Path  # the local folder
    build_seconds: float
    built_now: bool

    def context(self, cfg: SpaceConfig, cached: bool) -> TrialContext:
        return TrialContext(cfg, self.data.classes, str(self.teacher), self.data.train,
                            self.data.val, self.location if cached else None)


def _prepare(cfg: SpaceConfig, threads: int, build_threads: int) -> Prepared:
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(f"  {line}", flush=True)

    prepare_data(cfg.data)
    data = load_dataset(cfg.data, cfg.student.clip, Path(cfg.storage) / "indexes", log)
    teacher = prepare_teacher(cfg, data, log).path
    # A search's driver builds the cache right after fine-tuning, with teacher_cpus threads;
    # prepare_teacher may have changed them for the whole process, so they are set both ways.
    torch.set_num_threads(build_threads)
    location = prepare_cache(cfg, data, teacher, log)
    torch.set_num_threads(threads)
    # The folder the trials read: the location itself, or the node's copy of a remote cache.
    cache = ClipCache.open(location).folder
    built_now = not any(line.startswith("cache: reusing") for line in lines)
    # The build's own clock, so that a reused cache still reports what building it cost.
    seconds = float(json.loads((cache / META).read_text())["seconds"])
    return Prepared(data, teacher, str(location), cache, seconds, built_now)


# --- timing -------------------------------------------------------------------------------

def _time_pair(args: argparse.Namespace, root: Path, pair: tuple[str, str]) -> PairResult:
    print(f"{pair[0]} -> {pair[1]}:", flush=True)
    cfg = _space(args, root, pair, args.crop_size, args.views, args.epochs)
    prepared = _prepare(cfg, args.threads, args.build_threads)
    runs = {}
    for side, run in (("(a) online", lambda: _fit_run(prepared.context(cfg, cached=False))),
                      ("(b) cached", lambda: _fit_run(prepared.context(cfg, cached=True))),
                      ("(c) limit", lambda: _limit_run(prepared.context(cfg, cached=True)))):
        runs[side] = run()
        print(f"  {side}: epochs " + ", ".join(f"{s:.2f}" for s in runs[side].seconds)
              + " s", flush=True)
    cached, limit = runs["(b) cached"], runs["(c) limit"]
    # Proof that (b) and (c) did the same work: same data, same start, same losses.
    gap = max(abs(b - c) for b, c in zip(cached.losses, limit.losses, strict=True))
    if gap > 1e-5:
        raise AssertionError(f"(b) and (c) trained differently: losses {cached.losses} vs "
                             f"{limit.losses}")
    print(f"  (b) and (c) training losses agree (largest difference {gap:.1e})\n", flush=True)
    size = sum(f.stat().st_size for f in prepared.cache.iterdir())
    return PairResult(pair[0], pair[1], runs["(a) online"], cached, limit,
                      prepared.build_seconds, prepared.built_now, size)


def _fit_run(ctx: TrialContext) -> Run:
    stamps = [time.perf_counter()]
    losses: list[float] = []

    def report(metrics: dict[str, Any], _checkpoint: Path) -> None:
        stamps.append(time.perf_counter())
        losses.append(float(metrics["train_loss"]))

    fit(ctx, SAMPLED, report)
    return Run([b - a for a, b in zip(stamps, stamps[1:], strict=False)], losses)


def _limit_run(ctx: TrialContext) -> Run:
    """fit's epochs over (b)'s batches held in RAM: what a free loader would give."""
    assert ctx.cache is not None
    cfg = ctx.cfg
    settings = trial_student(cfg.student, SAMPLED)
    epochs = cfg.student.epochs
    cache = ClipCache.open(ctx.cache)
    source = CachedTrainBatches(cache, settings.batch_size, cfg.search.seed)
    # Every element is already a copy (fancy indexing of the map, indexing of the tensors):
    # the lists hold no page of the cache.
    train = {epoch: list(source.epoch(epoch)) for epoch in range(1, epochs + 1)}
    val = list(CachedValBatches(cache, settings.batch_size))
    del source, cache
    # From here on as fit does it, so that both start from the same weights and run the same
    # loop (kdsearch.train.loop.train_epochs) with the same checkpoint after every epoch.
    torch.manual_seed(cfg.search.seed)
    device = pick_device(cfg.resources.gpus_per_trial)
    student = build_model(settings.backbone, len(ctx.classes), cfg.student.weights, "student")
    student = to_channels_last(student.to(device), device, cfg.student.channels_last)
    optimizer = make_optimizer(student.parameters(), settings.optimizer, settings.lr,
                               settings.weight_decay, settings.momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    stamps = [time.perf_counter()]
    losses: list[float] = []

    def done(epoch: int, _lr: float, metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="kdsearch-bench-ckpt-") as tmp:
            save_student(Path(tmp), epoch=epoch, student=student, optimizer=optimizer,
                         schedule=schedule, settings=searched_values(settings),
                         classes=ctx.classes)
            stamps.append(time.perf_counter())
        losses.append(float(metrics["train_loss"]))

    train_epochs(student, optimizer, schedule, train_batches=train.__getitem__,
                 val_batches=val, device=device, classes=ctx.classes, epochs=epochs,
                 distillation=Distillation.from_student(settings),
                 bf16=cfg.student.bf16, channels_last=cfg.student.channels_last,
                 on_epoch=done)
    return Run([b - a for a, b in zip(stamps, stamps[1:], strict=False)], losses)


def _report_times(results: list[PairResult]) -> None:
    print("epoch seconds (median of the epochs after the first):")
    header = (f"{'teacher -> student':<22}{'(a) online':>11}{'(b) cached':>11}"
              f"{'(c) limit':>10}{'(a)/(b)':>9}{'(b)/(c)':>9}{'cache build s':>15}"
              f"{'cache MB':>10}")
    print(header)
    for r in results:
        a, b, c = r.online.epoch_seconds, r.cached.epoch_seconds, r.limit.epoch_seconds
        build = f"{r.build_seconds:.1f}" + ("" if r.built_now else "*")
        print(f"{r.teacher + ' -> ' + r.student:<22}{a:>11.3f}{b:>11.3f}{c:>10.3f}"
              f"{a / b:>9.2f}{b / c:>9.2f}{build:>15}{r.cache_bytes / MB:>10.1f}")
    if any(not r.built_now for r in results):
        print("* built by an earlier run (its own clock, from the cache's meta.json)")
    worst = max(r.cached.epoch_seconds / r.limit.epoch_seconds for r in results)
    print(f"target (b)/(c) <= 1.2: {'met' if worst <= 1.2 else 'NOT met'} (worst {worst:.2f})")


# --- memory -------------------------------------------------------------------------------

def _memory(args: argparse.Namespace, root: Path, pair: tuple[str, str]
            ) -> tuple[list[MemoryResult], int, int]:
    print(f"\nmemory: {pair[0]} -> {pair[1]} at crop {args.mem_crop}, {args.mem_views} views",
          flush=True)
    cfg = _space(args, root, pair, args.mem_crop, args.mem_views, args.mem_epochs)
    prepared = _prepare(cfg, args.threads, args.build_threads)
    folder = root / "memory"
    folder.mkdir(exist_ok=True)
    modes = [("cached", prepared.context(cfg, cached=True))]
    if not args.skip_online_memory:
        online = cfg.model_copy(update={"student": cfg.student.model_copy(
            update={"epochs": args.mem_online_epochs})})
        modes.append(("online", prepared.context(online, cached=False)))
    results = []
    for mode, ctx in modes:
        path = folder / f"{mode}.pkl"
        path.write_bytes(pickle.dumps(ctx))
        for trials in (1, 2):
            result = _run_trials(mode, path, trials, args.threads, prepared.cache, folder)
            print(f"  {mode}, {trials} trial(s): peak summed PSS "
                  f"{result.peak_pss_sum / MB:.0f} MB", flush=True)
            results.append(result)
    size = sum(f.stat().st_size for f in prepared.cache.iterdir())
    return results, size, (prepared.cache / TRAIN_CLIPS).stat().st_size


def _run_trials(mode: str, ctx_path: Path, count: int, threads: int, cache: Path,
                folder: Path) -> MemoryResult:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(ctx_path),
               "--threads", str(threads)]
    outputs = [folder / f"{mode}-{count}-{i}.out" for i in range(count)]
    procs = []
    for output in outputs:
        with output.open("w") as sink:
            procs.append(subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT))
    cache_files = (str(cache / TRAIN_CLIPS), str(cache / VAL_CLIPS))
    peak_rss, cache_rss, cache_pss_sum = [0] * count, [0] * count, 0
    peak = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    last_smaps = 0.0
    while any(p.poll() is None for p in procs):
        total = dict.fromkeys(peak, 0)
        for i, proc in enumerate(procs):
            for pid in _tree(proc.pid):
                rollup = _rollup(pid)
                for name in total:
                    total[name] += rollup.get(name, 0)
                if pid == proc.pid:
                    peak_rss[i] = max(peak_rss[i], rollup.get("Rss", 0))
        if total["Pss"] > peak["Pss"]:
            peak = total
        # Full smaps costs several times the rollup: once a second is enough for the
        # cache, whose mapped pages only grow while a trial runs.
        if time.monotonic() - last_smaps >= 1:
            last_smaps = time.monotonic()
            pss_sum = 0
            for i, proc in enumerate(procs):
                rss, pss = _mapped(proc.pid, cache_files)
                cache_rss[i] = max(cache_rss[i], rss)
                pss_sum += pss
            cache_pss_sum = max(cache_pss_sum, pss_sum)
        time.sleep(0.1)
    epochs = []
    for proc, output in zip(procs, outputs, strict=True):
        text = output.read_text()
        if proc.returncode != 0:
            raise RuntimeError(f"trial process failed ({proc.returncode}):\n{text[-3000:]}")
        seconds = json.loads(text.strip().splitlines()[-1])["seconds"]
        epochs.append(Run(seconds, []).epoch_seconds)
    return MemoryResult(mode, count, peak_rss, cache_rss, cache_pss_sum, peak["Pss"],
                        peak["Pss_Anon"], peak["Pss_File"], epochs)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the loader workers of an online trial)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            queue.extend(int(child) for child in children)
    return pids


def _rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes; empty when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[name] = int(parts[0]) * 1024
    return values


def _mapped(pid: int, files: tuple[str, ...]) -> tuple[int, int]:
    """(RSS, PSS) in bytes of the pages of ``files`` that process ``pid`` has mapped."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0, 0
    sums, inside = {"Rss:": 0, "Pss:": 0}, False
    for line in text.splitlines():
        first = line.split(maxsplit=1)[0]
        if not first.endswith(":"):  # a mapping's header line: address range, ..., path
            inside = line.rstrip().endswith(files)
        elif inside and first in sums:
            sums[first] += int(line.split()[1]) * 1024
    return sums["Rss:"], sums["Pss:"]


def _child(ctx_path: Path, threads: int) -> None:
    """One trial, as Ray's trainable runs it minus Ray: prints its epoch seconds as JSON."""
    torch.set_num_threads(threads)
    ctx = pickle.loads(ctx_path.read_bytes())
    print(json.dumps({"seconds": _fit_run(ctx).seconds}), flush=True)


def _report_memory(results: list[MemoryResult], args: argparse.Namespace,
                   pair: tuple[str, str], cache_bytes: int, clips_bytes: int) -> None:
    print(f"\nmemory of {pair[0]} -> {pair[1]} trials, clips {args.num_frames}x"
          f"{args.mem_crop}x{args.mem_crop}, {args.mem_views} views: cache "
          f"{cache_bytes / MB:.1f} MB on disk, of which training clips {clips_bytes / MB:.1f} "
          f"MB; cached trials {args.mem_epochs} epochs, online {args.mem_online_epochs}; "
          "MB = 2^20 bytes; peaks over 0.1 s samples")
    print(f"{'mode':<8}{'trials':>7}{'peak RSS/trial':>16}{'cache RSS/trial':>17}"
          f"{'cache PSS sum':>15}{'peak summed PSS (anon+file)':>29}{'vs 1 trial':>12}"
          f"{'epoch s':>14}")
    alone = {r.mode: r.peak_pss_sum for r in results if r.trials == 1}
    for r in results:
        def mbs(values: list[int]) -> str:
            return ", ".join(f"{v / MB:.0f}" for v in values)

        summed = (f"{r.peak_pss_sum / MB:.0f} ({r.peak_pss_anon / MB:.0f}+"
                  f"{r.peak_pss_file / MB:.0f})")
        epochs = ", ".join(f"{v:.2f}" for v in r.epoch_seconds)
        print(f"{r.mode:<8}{r.trials:>7}{mbs(r.peak_rss):>16}{mbs(r.peak_cache_rss):>17}"
              f"{r.peak_cache_pss_sum / MB:>15.0f}{summed:>29}"
              f"{r.peak_pss_sum / alone[r.mode]:>12.2f}{epochs:>14}")
    two = next(r for r in results if r.mode == "cached" and r.trials == 2)
    ratio = two.peak_pss_sum / alone["cached"]
    print(f"target: two cached trials < 2x one: {'met' if ratio < 2 else 'NOT met'} "
          f"({ratio:.2f}). Online rows include the loader workers' PSS; cache columns are "
          "sampled once a second.")


if __name__ == "__main__":
    main()
