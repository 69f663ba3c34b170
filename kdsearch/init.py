"""``python -m kdsearch.init DATA_ROOT [--out space.yaml] [--format F] [--force]``: a commented
starter space file for a folder of your own videos: the layout and classes found (through
:mod:`kdsearch.data.layouts` and the index the search reuses), a clip that fits the videos,
models that fit this machine and the demo's search, validated before it replaces anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdsearch.config import ConfigError, load_space
from kdsearch.data.index import IndexRow, index_path, index_split
from kdsearch.data.layouts import Format, LayoutError, Listing, list_split
from kdsearch.text import python_command

EXIT_BAD_INPUT = 2
VAL_FOLDERS = ("val", "validation", "valid")
CLIP_SECONDS = 1.5  # the span of video a clip aims at
ASSUMED_FPS = 25.0  # frame folders store no rate
MIN_FRAMES, MIN_CROP = 4, 32  # the smallest clip every registered model takes
CPU: dict[str, Any] = {"teacher": "small3d", "students": "tiny3d, tiny3d_wide, tiny_r2plus1d",
       "teacher_weights": "none", "student_weights": "none", "epochs": 12, "lr": 0.002,
       "batch": 8, "views": 8, "cpus": 1, "gpus": "0"}
GPU: dict[str, Any] = {"teacher": "r2plus1d_18", "students": "x3d_xs, r3d_18, mc3_18",
       "teacher_weights": "kinetics400", "student_weights": "pretrained", "epochs": 10,
       "lr": 0.0005, "batch": 16, "views": 4, "cpus": max(1, min(8, (os.cpu_count() or 2) // 2)),
       "gpus": "0.5  # two trials share one GPU"}

TEMPLATE = """\
experiment:
  name: {name}

data:
{data}

teacher:
{weights}
  model: {teacher}
  weights: {teacher_weights}
  finetune: full
  epochs: {epochs}
  lr: {lr}
  batch_size: {batch}
  cache: true  # decode and score the views of every video once, before the trials
  cache_views: {views}

student:
  backbone: {first_student}  # used when backbone is not searched
  weights: {student_weights}
  epochs: 10
  batch_size: {batch}
  optimizer: adamw
  weight_decay: 0.0001
  # Clip: {num_frames} frames {stride} apart span {span} frames, {seconds:.2f} s at {fps}.
  # {why} {aim:g} s; shorter videos repeat their last frame.
  # Crop {crop_size}: training resizes the short side to crop x 8/7 = {resized:.0f}, at most the
  # smallest short side found ({short}), so no video is upscaled. A longer span: raise stride;
  # finer detail: raise crop_size. Time grows with num_frames x crop_size^2.
  clip: {{num_frames: {num_frames}, stride: {stride}, crop_size: {crop_size}}}

search:
  space:
    alpha: {{type: uniform, low: 0.0, high: 0.9}}
    temperature: {{type: loguniform, low: 1.0, high: 16.0}}
    lr: {{type: loguniform, low: 0.0003, high: 0.01}}
    backbone: {{type: choice, values: [{students}]}}
  num_samples: 12
  max_concurrent: 2
  seed: 0
  metric: val_acc
  mode: max
  sampler: tpe
  scheduler: {{name: agreement, grace_period: 2, reduction_factor: 2}}

resources:
  cpus_per_trial: {cpus}
  gpus_per_trial: {gpus}

tracking:
  uri: null  # default: sqlite:///<directory you run from>/mlflow.db

storage: kdsearch_results  # Ray results, checkpoints, fine-tuned teachers and caches
"""


class InitError(Exception):
    """Bad input: one line for stderr."""


@dataclass(frozen=True)
class Found:
    fmt: Format
    train_split: str | None
    val_split: str | None
    classes: tuple[str, ...]
    rows: dict[str, list[IndexRow]]  # split source ("train", "val", "." for the root) -> rows

    def usable(self) -> list[IndexRow]:
        return [r for rows in self.rows.values() for r in rows if r.status == "ok"]

    def shortest(self) -> int:
        return min(r.num_frames for r in self.usable())

    def short_side(self) -> int:
        return min(min(r.width, r.height) for r in self.usable())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kdsearch.init",
        description="Write a commented starter space file for a folder of your own videos.")
    parser.add_argument("root", metavar="DATA_ROOT", help="the folder of videos (data.root)")
    parser.add_argument("--out", type=Path, default=Path("space.yaml"),
                        help="the space file to write (default: space.yaml)")
    parser.add_argument("--format", default="auto",
                        choices=["auto", "video_folder", "frame_folder"],
                        help="the layout (default: auto, video files first, then frame folders)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return parser.parse_args(argv)


def check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise InitError(f"--out: {str(out)!r} is a directory")
    if out.exists() and not force:
        raise InitError(f"--out: {str(out)!r} already exists (pass --force to overwrite it)")
    if not out.parent.is_dir():
        raise InitError(f"--out: folder {str(out.parent)!r} does not exist")


def detect(root: Path, fmt: str) -> tuple[Format, str | None, str | None, list[Listing]]:
    """(format, train_split, val_split, listings) of the folder at ``root``."""
    if not root.is_dir():
        raise InitError(f"DATA_ROOT: {str(root)!r} is not a directory")
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not folders:
        raise InitError(f"DATA_ROOT: {str(root)!r} has no class folders (expected "
                        "<root>/<class>/<video> or <root>/train/<class>/<video>)")
    train = "train" if "train" in folders else None
    val = next((n for n in VAL_FOLDERS if n in folders), None) if train else None
    formats: list[Format] = ["video_folder", "frame_folder"]
    first: LayoutError | None = None
    for candidate in formats if fmt == "auto" else [f for f in formats if f == fmt]:
        try:
            listing = list_split(root, candidate, train)
        except LayoutError as err:
            first = first or err
            continue
        # The training split decided the format; the validation split must follow it.
        extra = [list_split(root, candidate, val, listing.classes)] if val else []
        return candidate, train, val, [listing, *extra]
    raise first or LayoutError(f"no format is {fmt}")


def probe(root: Path, fmt: Format, train: str | None, val: str | None,
          listings: list[Listing]) -> Found:
    """Index every video (the index the search reuses) and check that each class has some."""
    fallback = Path("kdsearch_results", "indexes").resolve()  # the search's, for a read-only root
    rows = {item.source: index_split(root, item, index_path(root, item.source, fallback))
            for item in listings}
    every = [r for split in rows.values() for r in split]
    if not any(r.status == "ok" for r in every):
        raise InitError(f"DATA_ROOT: none of the {len(every)} videos in {str(root)!r} is usable "
                        f"({_counts(r.status for r in every)})")
    for source, split in rows.items():
        usable = Counter(r.label for r in split if r.status == "ok")
        for label, name in enumerate(listings[0].classes):
            if not usable[label]:
                where = "the root" if source == "." else f"{source}/"
                raise InitError(f"DATA_ROOT: class {name!r} has no usable video in {where} "
                                f"({_counts(r.status for r in split if r.label == label)})")
    return Found(fmt, train, val, listings[0].classes, rows)


def choose_clip(found: Found, frames: int, crop: int) -> dict[str, Any]:
    """``frames`` (the teacher's) unless the shortest video is shorter, a stride spanning about
    CLIP_SECONDS that fits the shortest video, and a crop that upscales no video."""
    shortest, rates = found.shortest(), [r.fps for r in found.usable() if r.fps]
    fps = statistics.median(rates) if rates else ASSUMED_FPS
    t = max(MIN_FRAMES, min(frames, shortest))
    aim = max(1, round((CLIP_SECONDS * fps - 1) / (t - 1)))
    stride = max(1, min(aim, (shortest - 1) // (t - 1)))
    # Training resizes the short side to crop * 8/7 before cropping (kdsearch.data.video).
    crop_size = max(MIN_CROP, min(crop, found.short_side() * 7 // 8 // 8 * 8))
    span = (t - 1) * stride + 1
    why = (f"The shortest video ({shortest} frames) keeps it under" if stride < aim or t < frames
           else "The aim is about")
    return {"num_frames": t, "stride": stride, "crop_size": crop_size, "span": span,
            "seconds": span / fps, "fps": f"{fps:g} fps" + ("" if rates else " (assumed)"),
            "why": why, "aim": CLIP_SECONDS, "resized": crop_size * 8 / 7,
            "short": found.short_side()}


def _counts(statuses: Iterable[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(Counter(statuses).items())) or "none"


def _key(key: str, value: object, comment: str = "") -> str:
    """``  key: value`` in YAML (a long list wrapped), with an optional comment."""
    flow = None if isinstance(value, list) else False  # lists in [a, b], the rest plain
    text = yaml.safe_dump({key: value}, default_flow_style=flow, width=94).rstrip("\n")
    return "  " + text.replace("\n", "\n  ") + (f"  # {comment}" if comment else "")


def header(command: str, out: Path, found: Found, gpu: bool) -> str:
    usable, split = found.usable(), "class folders directly under the root"
    if found.train_split:
        split = f"split folders {found.train_split}/" + (
            f" and {found.val_split}/" if found.val_split else " (no validation folder)")
    skipped = _counts(r.status for rows in found.rows.values() for r in rows if r.status != "ok")
    lines = [f"# Starter space file written by:  {command}",
             f"# Found: {found.fmt}, {split}; {len(found.classes)} classes, {len(usable)} "
             f"usable videos (skipped: {skipped})"]
    for label, name in enumerate(found.classes[:12]):
        per = [f"{sum(r.label == label for r in rows if r.status == 'ok')} "
               f"{'videos' if src == '.' else src}" for src, rows in found.rows.items()]
        lines.append(f"#   {name}: {', '.join(per)}")
    lines += [f"#   ... and {len(found.classes) - 12} more classes"] * (len(found.classes) > 12)
    frames = sorted(r.num_frames for r in usable)
    rates = sorted({f"{r.fps:g}" for r in usable if r.fps}, key=float)
    (w, h), _ = Counter((r.width, r.height) for r in usable).most_common(1)[0]
    return "\n".join([
        *lines, f"# Frames per video: min {frames[0]}, median {statistics.median(frames):g}; "
        f"fps: {', '.join(rates[:6]) or 'none stored (frame folders)'}",
        f"# Size: {w}x{h} (most common), short side min {found.short_side()}",
        f"# Machine: {'a' if gpu else 'no'} CUDA GPU, so "
        f"{'Kinetics-400 models' if gpu else 'the small CPU models of the demo'}.",
        f"# Next:  {python_command()} -m kdsearch.run {out} --dry-run   (checks every value)",
        f"#  then: {python_command()} -m kdsearch.run {out}   (runs the search)",
        "# Every key: docs/space-file.md; layouts and the index: docs/your-data.md.", ""])


def data_lines(root: str, found: Found) -> str:
    lines = [_key("format", found.fmt),
             _key("root", root, "a relative path resolves against where you run from"),
             _key("train_split", found.train_split), _key("val_split", found.val_split)]
    if found.val_split is None:
        lines += ["  val_fraction: 0.2  # of every class, held out for validation"]
    if found.fmt == "frame_folder":
        lines += [f"  # frame_rate: {ASSUMED_FPS:g}  # frame folders store none; set yours"]
    return "\n".join([*lines, "  # the class folders found, sorted; their order is the labels'",
                      _key("classes", list(found.classes)),
                      "  short_videos: pad  # or skip: drop videos shorter than the clip"])


def weights_notes(gpu: bool) -> tuple[str, list[str]]:
    """Comment lines on published weights, and the models (on a GPU) whose file is missing."""
    from kdsearch.models import get_spec, weights_path

    lines = ["  # Kinetics-400 weights: downloaded into the torch hub cache when the search\n"
             "  # starts (once per machine); offline (KDSEARCH_OFFLINE=1), put them there:"
             if gpu else "  # No GPU: the demo's CPU teacher, from scratch. On a CUDA GPU, "
             "kdsearch.init picks\n  # Kinetics-400 models, their weights read from the "
             "torch hub cache, e.g."]
    missing = []
    for name in [GPU["teacher"], *GPU["students"].split(", ")] if gpu else [GPU["teacher"]]:
        spec = get_spec(name)
        path = weights_path(spec)
        lines.append(f"  #   {name}: {path}")
        if not path.is_file():
            missing += [name] if gpu else []
            lines.append(f"  #     not there yet: {spec.weights_url}")
    return "\n".join(lines), missing


def render(args: argparse.Namespace, command: str, found: Found, gpu: bool
           ) -> tuple[str, dict[str, Any], list[str]]:
    """The space file's text, the clip chosen and the models whose weights are missing."""
    from kdsearch.models import get_spec

    models = GPU if gpu else CPU
    clip = choose_clip(found, *get_spec(models["teacher"]).clip)
    notes, missing = weights_notes(gpu)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(args.root).resolve().name).strip("-.")
    body = TEMPLATE.format(name=f"{name or 'my-videos'}-kd", data=data_lines(args.root, found),
                           weights=notes, first_student=models["students"].split(",")[0],
                           **models, **clip)
    return header(command, args.out, found, gpu) + body, clip, missing


def write_space(out: Path, text: str, overrides: list[str]) -> None:
    """Validate, then write atomically: a temporary file beside ``out``, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        load_space(tmp, overrides)
        os.replace(tmp, out)
    except ConfigError as err:
        raise InitError(f"--out: the generated file does not validate: "
                        f"{'; '.join(err.problems)}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def run(args: argparse.Namespace, command: str) -> int:
    import torch

    check_out(args.out, args.force)
    root = (Path.cwd() / Path(args.root).expanduser()).resolve()
    found = probe(root, *detect(root, args.format))
    text, clip, missing = render(args, command, found, torch.cuda.is_available())
    # Weights not yet in the torch hub cache must not stop the file, even offline.
    write_space(args.out, text, ["teacher.weights=none", "student.weights=none"] * bool(missing))
    print(f"wrote {args.out}: {found.fmt}, {len(found.classes)} classes, "
          f"{len(found.usable())} usable videos; clip {clip['num_frames']} frames, stride "
          f"{clip['stride']}, crop {clip['crop_size']}")
    if missing:
        print(f"note: the search downloads the Kinetics-400 weights of {', '.join(missing)} "
              f"before it starts (offline: {args.out} says where to put them)")
    print(f"next: {python_command()} -m kdsearch.run {args.out} --dry-run, then without "
          "--dry-run")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [args.root, "--out", str(args.out)]
    parts += ["--format", args.format] if args.format != "auto" else []
    command = "python -m kdsearch.init " + shlex.join(parts + ["--force"] * args.force)
    try:
        return run(args, command)
    except (InitError, LayoutError) as err:
        prefix = "DATA_ROOT: " if isinstance(err, LayoutError) else ""
        print(f"error: {prefix}{err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
