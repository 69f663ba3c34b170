"""What each student backbone costs, measured as a trial measures it, twice: how well the
latency figures repeat.

Run ``python benchmarks/cost.py --help``. For every student backbone of the registry (or
``--backbones``) at its native clip (or ``--clip FRAMES CROP``), it measures the cost with
:func:`kdsearch.models.cost.measure_cost` (parameters, GFLOPs, batch-1 latency with the
threads given, and on one CPU thread), then measures every backbone a second time, in a
second round after the first has finished, and prints both rounds and the ratio of their
latencies (the target: within 10 %). ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsearch.models import build_model, get_spec, list_models  # noqa: E402
from kdsearch.models.cost import measure_cost  # noqa: E402
from kdsearch.text import format_table  # noqa: E402

SMOKE_BACKBONES = ("tiny3d", "tiny_r2plus1d")


def measure(backbones: list[str], clip: tuple[int, int] | None, runs: int, device: str
            ) -> dict[str, dict[str, float]]:
    found = {}
    for name in backbones:
        model = build_model(name, 4, "none", "student").eval()
        shape = clip or get_spec(name).clip
        found[name] = {**measure_cost(model, shape, device, runs=runs).metrics(),
                       "frames": shape[0], "crop": shape[1]}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="student backbones (default: every student of the registry)")
    parser.add_argument("--clip", nargs=2, type=int, default=None, metavar=("FRAMES", "CROP"),
                        help="the clip shape (default: each backbone's native clip)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny backbones at 4x32, 5 runs: the code path in seconds")
    args = parser.parse_args(argv)
    backbones = args.backbones or list(list_models("student"))
    clip = tuple(args.clip) if args.clip else None
    if args.smoke:
        backbones, clip, args.runs = list(SMOKE_BACKBONES), (4, 32), 5
    torch.set_num_threads(args.threads)
    rounds = [measure(backbones, clip, args.runs, args.device) for _ in range(2)]
    rows: list[list[str]] = []
    out: dict[str, Any] = {"device": args.device, "threads": args.threads, "runs": args.runs,
                           "backbones": {}}
    for name in backbones:
        first, second = rounds[0][name], rounds[1][name]
        ratio = second["latency_ms"] / first["latency_ms"]
        cpu_ratio = second["cpu_latency_ms"] / first["cpu_latency_ms"]
        out["backbones"][name] = {"first": first, "second": second, "latency_ratio": ratio,
                                  "cpu_latency_ratio": cpu_ratio}
        rows.append([name, f"{int(first['frames'])}x{int(first['crop'])}",
                     f"{first['student_params'] / 1e6:.2f}", f"{first['student_gflops']:.3g}",
                     f"{first['latency_ms']:.3g}", f"{second['latency_ms']:.3g}",
                     f"{ratio:.3f}", f"{first['cpu_latency_ms']:.3g}",
                     f"{second['cpu_latency_ms']:.3g}", f"{cpu_ratio:.3f}"])
    print(f"student cost on {args.device}, {args.threads} thread(s), batch 1, median of "
          f"{args.runs} runs; two rounds, the second after the first")
    print("\n".join(format_table(
        ["backbone", "clip", "params M", "GFLOPs", "ms (1)", "ms (2)", "ratio",
         "1-thread ms (1)", "1-thread ms (2)", "ratio"], rows, right=set(range(2, 10)))))
    worst = max(max(abs(b["latency_ratio"] - 1), abs(b["cpu_latency_ratio"] - 1))
                for b in out["backbones"].values())
    out["worst_difference"] = worst
    print(f"largest difference between the rounds: {worst:.1%} (target: within 10 %)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
