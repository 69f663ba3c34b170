"""What a student costs to run: parameters, FLOPs and latency, measured on the real network.

A trial measures its student once, before training (kdsearch.train.trial), so that a limit in
``search.constraints`` stops it at no cost; the numbers are logged on the trial's run and
compared by the report and ``kdsearch.best``. Latency is of batch 1 (one clip: what a camera
or a server answering one request sees), after ``warmup`` runs, the median and the 90th
percentile of at least ``runs`` timed ones adding up to at least ``MIN_SECONDS``; on a GPU each
run is timed to the end of its kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdsearch.config import Choice, ConfigError, SpaceConfig
from kdsearch.models.normalized import build_model

RUNS = 20
WARMUP = 3
MIN_SECONDS = 0.2  # the least time the timed runs of one latency add up to


@dataclasses.dataclass(frozen=True)
class Cost:
    params: int
    gflops: float  # per clip (one multiply-add counts as two operations)
    latency_ms: float  # on the measuring device, batch 1: median
    latency_p90_ms: float
    cpu_latency_ms: float  # on the CPU, one thread, batch 1: median

    def metrics(self) -> dict[str, float]:
        """As the trial's run logs them (kdsearch.config.COST_METRICS)."""
        return {"student_params": float(self.params), "student_gflops": self.gflops,
                "latency_ms": self.latency_ms, "latency_p90_ms": self.latency_p90_ms,
                "cpu_latency_ms": self.cpu_latency_ms}


def measure_cost(model: nn.Module, clip: tuple[int, int], device: torch.device | str = "cpu",
                 *, runs: int = RUNS, warmup: int = WARMUP) -> Cost:
    """The cost of ``model`` on one clip of ``clip`` = (frames, crop): its parameters, its
    GFLOPs, its latency on ``device`` (with the threads torch has there) and on one CPU
    thread. ``model`` itself is left as it was (mode, device, weights)."""
    device = torch.device(device)
    frames, crop = clip
    params = sum(p.numel() for p in model.parameters())
    cpu_model = copy.deepcopy(model).cpu().eval()
    # Its own generator: measuring leaves torch's global random state (a trial's batches and
    # dropout) exactly as it was.
    example = torch.rand(1, 3, frames, crop, crop, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        cpu_model(example)
    gflops = counter.get_total_flops() / 1e9
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu_latency, _ = latency_ms(cpu_model, example, runs=runs, warmup=warmup)
    finally:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        latency, p90 = latency_ms(cpu_model, example, runs=runs, warmup=warmup)
    else:
        on_device = copy.deepcopy(model).to(device).eval()
        latency, p90 = latency_ms(on_device, example.to(device), runs=runs, warmup=warmup)
        del on_device
    return Cost(params, gflops, latency, p90, cpu_latency)


def latency_ms(model: nn.Module, example: torch.Tensor, *, runs: int = RUNS,
               warmup: int = WARMUP, min_seconds: float = MIN_SECONDS) -> tuple[float, float]:
    """(median, 90th percentile) milliseconds of ``model(example)`` without gradients: after
    ``warmup`` runs (and at least a quarter of ``min_seconds``), ``runs`` timed ones, more
    until they add up to ``min_seconds`` (a window of a few milliseconds is at the mercy of
    whatever else the machine does)."""
    cuda = example.device.type == "cuda"

    def once() -> float:
        if cuda:
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        model(example)
        if cuda:
            torch.cuda.synchronize(example.device)
        return time.perf_counter() - start

    times: list[float] = []
    with torch.no_grad():
        warm, count = 0.0, 0
        while count < warmup or warm < min_seconds / 4:
            warm += once()
            count += 1
        while len(times) < runs or (sum(times) < min_seconds and len(times) < 100 * runs):
            times.append(once())
    ms = [t * 1000 for t in times]
    return statistics.median(ms), _percentile(ms, 0.9)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def check_constraints(cfg: SpaceConfig, num_classes: int | None, *, runs: int = 5
                      ) -> dict[str, dict[str, float]]:
    """The cost of every student backbone the search can sample (on this machine's CPU, with
    a head of ``num_classes``, 2 when not known yet), when ``search.constraints`` sets a
    limit; raises :class:`ConfigError` when no backbone meets them, before anything else of
    the search runs. ``latency_ms`` is checked here only for trials that run on the CPU (on
    a GPU only the trial itself can measure it)."""
    constraints = cfg.search.constraints
    if not constraints.limits():
        return {}
    searched = cfg.search.space.get("backbone")
    backbones = ([str(v) for v in searched.values] if isinstance(searched, Choice)
                 else [cfg.student.backbone])
    checkable = constraints
    if cfg.resources.gpus_per_trial > 0:
        checkable = constraints.model_copy(update={"latency_ms": None})
    clip = (cfg.student.clip.num_frames, cfg.student.clip.crop_size)
    threads = max(1, int(cfg.resources.cpus_per_trial))
    costs, unmet = {}, []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in dict.fromkeys(backbones):
            model = build_model(name, num_classes or 2, "none", "student")
            costs[name] = measure_cost(model, clip, "cpu", runs=runs, warmup=1).metrics()
            if (exceeded := checkable.violations(costs[name])):
                unmet.append(f"{name}: {', '.join(exceeded)}")
    finally:
        torch.set_num_threads(previous)
    if len(unmet) == len(costs):
        head = (f"{num_classes} classes" if num_classes
                else "2 classes, as the class count is not known before the data are read")
        raise ConfigError([f"search.constraints: no student backbone meets them at clip "
                           f"{clip[0]}x{clip[1]} (measured on this machine's CPU, a head of "
                           f"{head}): " + "; ".join(unmet)])
    return costs
