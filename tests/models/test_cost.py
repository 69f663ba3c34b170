"""kdsearch.models.cost: what a student costs, measured on the real network."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from kdsearch.models import build_model
from kdsearch.models.cost import latency_ms, measure_cost


def test_params_and_flops_are_counted_exactly() -> None:
    conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
    cost = measure_cost(conv, (4, 8), runs=3, warmup=1)
    assert cost.params == 8 * 3 * 27 + 8
    # Each of the 8 x 4 x 8 x 8 outputs takes 3 x 27 multiply-adds, two operations each.
    assert cost.gflops == pytest.approx(2 * 8 * 4 * 8 * 8 * 3 * 27 / 1e9)


def test_the_cost_of_a_student_and_its_metrics() -> None:
    student = build_model("tiny3d", 4, "none", "student").train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cost = measure_cost(student, (4, 32), runs=5, warmup=1)
    assert cost.params == 107892
    assert 0 < cost.gflops < 0.1
    assert 0 < cost.latency_ms <= cost.latency_p90_ms and cost.cpu_latency_ms > 0
    assert student.training  # left as it was
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert set(cost.metrics()) == {"student_params", "student_gflops", "latency_ms",
                                   "latency_p90_ms", "cpu_latency_ms"}
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    measure_cost(student, (4, 32), runs=2, warmup=0)
    assert torch.get_num_threads() == threads  # one thread only while measuring
    assert torch.equal(torch.get_rng_state(), state)  # a trial's random stream is untouched


def test_latency_is_the_median_and_the_90th_percentile_of_the_timed_runs() -> None:
    calls = []

    class Counted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return x

    median, p90 = latency_ms(Counted(), torch.zeros(1), runs=10, warmup=2, min_seconds=0)
    assert len(calls) == 12 and 0 <= median <= p90

    class Slow(nn.Module):  # 2 ms a run: 10 runs are not enough for 0.1 s, 50 or so are
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            time.sleep(0.002)
            return x

    calls.clear()
    median, p90 = latency_ms(Slow(), torch.zeros(1), runs=10, warmup=2, min_seconds=0.1)
    assert 2 <= median <= p90 and 50 <= len(calls) <= 80  # warm-up 25 ms, timed 100 ms
