"""kdsearch.search.stopping: ASHA that stops at a rung only once the rung is known to rank
trials as the final epoch does, and never within the metric's noise of the cutoff."""

from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from kdsearch.search.stopping import AgreementASHA, rungs_of
from kdsearch.track.schema import rank_correlation as spearman

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
MAX_T = 8


def run(scheduler: AgreementASHA, trial_id: str, curve: list[float]) -> int:
    """Feed ``curve`` epoch by epoch until the scheduler stops it; the epochs trained."""
    for epoch, value in enumerate(curve, start=1):
        if scheduler.decide(trial_id, {"epoch": epoch, "val_acc": value}) == STOP:
            return epoch
    return len(curve)


def test_rungs_and_rank_correlation() -> None:
    assert rungs_of(1, 2, 8) == [1, 2, 4]
    assert rungs_of(2, 3, 10) == [2, 6]
    assert rungs_of(8, 2, 8) == []
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties share a rank
    assert spearman([1, 1], [2, 3]) is None and spearman([1], [1]) is None


def _good_early(i: int) -> list[float]:
    """Curves whose epoch-1 value ranks them as the final one does."""
    final = 0.3 + 0.05 * i
    return [final * e / MAX_T for e in range(1, MAX_T + 1)]


def test_nothing_is_stopped_before_a_rung_is_known_to_agree() -> None:
    scheduler = AgreementASHA(metric="val_acc", mode="max", max_t=MAX_T, grace_period=1,
                              reduction_factor=2, min_pairs=4, min_agreement=0.5)
    # Worst first: every trial is below the cutoff of those before it, yet none is stopped
    # until 4 completed trials show that epoch 1 ranks like epoch 8.
    epochs = [run(scheduler, f"t{i}", _good_early(i)) for i in (9, 8, 7, 6)]
    assert epochs == [MAX_T] * 4
    assert scheduler.rungs[0].unknown == 3 and scheduler.rungs[0].stopped == 0
    later = [run(scheduler, f"t{i}", _good_early(i)) for i in (0, 1, 2)]
    assert later == [1, 1, 1]  # now known to agree: the weak ones stop at the first rung
    first = scheduler.decisions()[0]
    assert first["epoch"] == 1 and first["stopped"] == 3
    assert first["agreement"] == pytest.approx(1.0) and first["pairs"] == 4


def test_a_rung_that_misleads_never_stops_anything() -> None:
    # Early value is the reverse of the final: fast starters end worst.
    def misleading(i: int) -> list[float]:
        final = 0.3 + 0.05 * i
        return [1.0 - final] * 2 + [final] * (MAX_T - 2)

    scheduler = AgreementASHA(metric="val_acc", mode="max", max_t=MAX_T, grace_period=1,
                              reduction_factor=2, min_pairs=3)
    epochs = [run(scheduler, f"t{i}", misleading(i)) for i in range(10)]
    assert epochs == [MAX_T] * 10  # the best (t9) trains to the end, like everyone
    assert scheduler.rungs[0].agreement == pytest.approx(-1.0)
    assert sum(r.stopped for r in scheduler.rungs) == 0


def test_within_the_noise_of_the_cutoff_is_let_through() -> None:
    scheduler = AgreementASHA(metric="val_acc", mode="max", max_t=MAX_T, grace_period=1,
                              reduction_factor=2, min_pairs=3,
                              margin=lambda p: math.sqrt(p * (1 - p) / 100))
    for i in (5, 6, 7, 8):
        run(scheduler, f"t{i}", _good_early(i))
    cutoff = scheduler.rungs[0].cutoff
    assert cutoff is not None
    # One standard error at the cutoff (about 0.08) on 100 videos is about 0.027.
    near = [cutoff - 0.01] * MAX_T
    far = [cutoff - 0.06] * MAX_T
    assert run(scheduler, "near", near) > 1
    assert run(scheduler, "far", far) == 1
    assert scheduler.rungs[0].within_noise == 1


def test_a_minimised_metric_stops_the_highest() -> None:
    scheduler = AgreementASHA(metric="val_loss", mode="min", max_t=MAX_T, grace_period=1,
                              reduction_factor=2, min_pairs=3)
    for i in range(4):  # flat curves: every rung agrees with the final epoch
        for epoch in range(1, MAX_T + 1):
            scheduler.decide(f"t{i}", {"epoch": epoch, "val_loss": 2.0 - 0.1 * i})
    assert scheduler.decide("high", {"epoch": 1, "val_loss": 5.0}) == STOP
    assert scheduler.decide("low", {"epoch": 1, "val_loss": 0.5}) == CONTINUE
    cutoff = scheduler.rungs[0].cutoff  # in the metric's own sign: a loss
    assert cutoff is not None and 1.7 <= cutoff <= 2.0


def test_a_nan_value_ranks_last_and_results_without_the_metric_are_ignored() -> None:
    scheduler = AgreementASHA(metric="val_acc", mode="max", max_t=MAX_T, min_pairs=2)
    for i in (5, 6, 7):
        run(scheduler, f"t{i}", _good_early(i))
    assert scheduler.decide("nan", {"epoch": 1, "val_acc": float("nan")}) == STOP
    assert scheduler.decide("x", {"epoch": 1}) == CONTINUE
    assert scheduler.decide("x", {"val_acc": 0.5}) == CONTINUE
