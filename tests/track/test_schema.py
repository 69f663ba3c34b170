"""kdsearch.track.schema: the one ranking of trials, trial statuses and the noise of a metric."""

from __future__ import annotations

import math

import pytest

from kdsearch.track.schema import (
    NOISY_SE,
    KdGain,
    Status,
    TrialRow,
    baseline_query,
    best_row,
    kd_gain,
    kd_gain_of,
    kd_metrics,
    rank_rows,
    ranked,
    small_val_warning,
    standard_error,
    status_of,
    trial_query,
)


def row(trial_id: str, status: str, epochs: int, value: float | None) -> TrialRow:
    return TrialRow(trial_id, f"run-{trial_id}", status, epochs, value, {})


def test_ranking_by_status_then_last_value_then_trial_id() -> None:
    rows = [row("p_far", "pruned", 4, 0.3), row("c_nan", "completed", 8, math.nan),
            row("f", "failed", 1, 0.99), row("c_b", "completed", 8, 0.7),
            row("p_near", "pruned", 2, 0.9), row("c_a", "completed", 8, 0.7),
            row("c_none", "completed", 8, None), row("c_top", "completed", 8, 0.8),
            row("i", "interrupted", 3, 0.5)]
    order = [r.trial_id for r in rank_rows(rows, "max")]
    # Completed by value (ties by id; NaN and missing after every finite value), pruned by
    # how far they got, then interrupted, then failed.
    assert order == ["c_top", "c_a", "c_b", "c_nan", "c_none", "p_far", "p_near", "i", "f"]
    assert [r.trial_id for r in rank_rows(rows, "min")][:3] == ["c_a", "c_b", "c_top"]
    best = best_row(rows, "max")
    assert best is not None and best.trial_id == "c_top"
    assert best_row([row("p", "pruned", 2, 0.9)], "max") is None  # only completed trials


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_a_non_finite_value_ranks_last_and_never_best(mode: str, bad: float | None) -> None:
    # "a_..." ids: the tie-break by trial id alone would put them first.
    rows = [row("b_low", "completed", 8, 0.2), row("a_bad", "completed", 8, bad),
            row("c_high", "completed", 8, 0.9), row("a_pbad", "pruned", 4, bad),
            row("p_ok", "pruned", 4, 0.5)]
    finite_first = ["c_high", "b_low"] if mode == "max" else ["b_low", "c_high"]
    assert [r.trial_id for r in rank_rows(rows, mode)] == [*finite_first, "a_bad", "p_ok",
                                                           "a_pbad"]
    best = best_row(rows, mode)
    assert best is not None and best.trial_id == finite_first[0]
    assert best_row([row("a_bad", "completed", 8, bad)], mode) is None


@pytest.mark.parametrize("mode", ["max", "min"])
def test_every_non_finite_value_after_every_finite_one(mode: str) -> None:
    values = {"a": math.inf, "b": -math.inf, "c": math.nan, "d": 0.5, "e": None, "f": -3.0}
    order = ranked(list(values), mode=mode, status=lambda _: Status.COMPLETED,
                   value=values.__getitem__, trial_id=str)
    assert order == (["d", "f"] if mode == "max" else ["f", "d"]) + ["a", "b", "c", "e"]


def test_status_of_a_trial_that_ended() -> None:
    assert status_of(10, 10) is Status.COMPLETED and status_of(11, 10) is Status.COMPLETED
    assert status_of(4, 10) is Status.PRUNED
    assert str(Status.PRUNED) == "pruned"


def test_trial_query_filters_one_search() -> None:
    assert trial_query("abc", status=Status.COMPLETED) == (
        "tags.`mlflow.parentRunId` = 'abc' and tags.`kdsearch.role` = 'trial' and "
        "tags.`kdsearch.status` = 'completed'")


def test_standard_error_is_binomial_on_the_validation_videos() -> None:
    assert standard_error("val_acc", 0.8, 100) == pytest.approx(0.04)
    assert standard_error("val_video_acc", 0.5, 25) == pytest.approx(0.1)
    assert standard_error("val_acc", 1.0, 10) == 0.0
    assert standard_error("val_loss", 0.8, 100) is None  # not a proportion
    assert standard_error("val_acc", 0.8, None) is None
    assert standard_error("val_acc", 0.8, 0) is None
    assert standard_error("val_acc", math.nan, 100) is None


def test_small_validation_sets_are_called_out() -> None:
    needed = math.ceil(0.25 / NOISY_SE**2)  # where sqrt(0.25 / n) reaches NOISY_SE
    assert small_val_warning("val_acc", needed) is None
    assert small_val_warning("val_acc", 400) is None
    warning = small_val_warning("val_acc", 6)
    assert warning is not None and warning.startswith("only 6 validation videos")
    assert f"{math.sqrt(0.25 / 6):.3f}" in warning and f"{needed} or more" in warning
    assert small_val_warning("val_acc", needed - 1) is not None
    assert small_val_warning("val_loss", 6) is None
    one = small_val_warning("val_acc", 1)
    assert one is not None and one.startswith("only 1 validation video:")


# --- what the teacher added ------------------------------------------------------------------

KD = [0.50, 0.54, 0.52]  # mean 0.52, s^2 = (0.02^2 + 0.02^2) / 2 = 0.0004
NO_TEACHER = [0.45, 0.47, 0.49]  # mean 0.47, s^2 = 0.0004


def test_kd_gain_mean_difference_and_its_standard_error_from_the_seeds() -> None:
    gain = kd_gain(KD, NO_TEACHER, metric="val_acc", mode="max", n_val=100)
    assert (gain.kd_mean, gain.no_teacher_mean) == pytest.approx((0.52, 0.47))
    assert gain.gain == pytest.approx(0.05)
    assert gain.se == pytest.approx(math.sqrt(0.0004 / 3 + 0.0004 / 3))  # 0.0163
    assert gain.val_se == pytest.approx(math.sqrt(0.52 * 0.48 / 100))  # at the KD mean
    assert gain.verdict == "helped"  # 0.05 >= 2 * 0.0163


@pytest.mark.parametrize(("kd", "no_teacher", "verdict"), [
    (NO_TEACHER, KD, "hurt"),  # -0.05, 2 SE = 0.033
    # 0.01 against 2 * sqrt(0.0004 / 3 + 0.0001 / 3) = 0.026
    (KD, [0.50, 0.52, 0.51], "within noise"),
    ([0.5, 0.5], [0.5, 0.5], "within noise"),  # no spread and no difference
    ([0.6, 0.6], [0.5, 0.5], "helped"),  # no spread: any difference is beyond it
])
def test_kd_verdict(kd: list[float], no_teacher: list[float], verdict: str) -> None:
    assert kd_gain(kd, no_teacher, metric="val_acc", mode="max", n_val=None).verdict == verdict


def test_kd_gain_of_a_loss_is_positive_when_the_teacher_lowers_it() -> None:
    # means 1.1 and 1.6; s^2 = 0.02 each side, so SE = sqrt(0.02 / 2 + 0.02 / 2) = 0.1414
    gain = kd_gain([1.0, 1.2], [1.5, 1.7], metric="val_loss", mode="min", n_val=100)
    assert gain.gain == pytest.approx(0.5)
    assert gain.se == pytest.approx(math.sqrt(0.02))
    assert gain.val_se is None  # no binomial noise for a loss
    assert gain.verdict == "helped"
    worse = kd_gain([1.5, 1.7], [1.0, 1.2], metric="val_loss", mode="min", n_val=100)
    assert worse.gain == pytest.approx(-0.5) and worse.verdict == "hurt"


def test_one_seed_has_no_standard_error_and_no_verdict() -> None:
    gain = kd_gain([0.6], [0.5], metric="val_acc", mode="max", n_val=25)
    assert gain.gain == pytest.approx(0.1)
    assert gain.se is None and gain.verdict == "unknown"
    assert gain.val_se == pytest.approx(math.sqrt(0.6 * 0.4 / 25))
    uneven = kd_gain([0.6], [0.5, 0.52], metric="val_acc", mode="max", n_val=None)
    assert uneven.se is None and (uneven.kd_runs, uneven.no_teacher_runs) == (1, 2)
    with pytest.raises(ValueError, match="0 runs with the teacher and 2 without"):
        kd_gain([], [0.5, 0.52], metric="val_acc", mode="max", n_val=None)


@pytest.mark.parametrize("gain", [
    kd_gain(KD, NO_TEACHER, metric="val_acc", mode="max", n_val=100),
    kd_gain([1.0, 1.2], [1.5, 1.7], metric="val_loss", mode="min", n_val=100),
    KdGain("val_acc", "max", 0.6, 0.5, 1, 1, None, None),
])
def test_kd_metrics_read_back_as_the_same_gain(gain: KdGain) -> None:
    metrics = kd_metrics(gain)
    assert metrics["kd_gain"] == pytest.approx(
        (1 if gain.mode == "max" else -1)
        * (metrics[f"kd_student_{gain.metric}"] - metrics[f"no_teacher_{gain.metric}"]))
    assert ("kd_gain_se" in metrics) == (gain.se is not None)
    assert kd_gain_of(metrics, gain.metric, gain.mode) == gain
    assert kd_gain_of({"val_acc": 0.5}, "val_acc", "max") is None


def test_baseline_runs_are_not_trials_to_any_query() -> None:
    assert "'kd_baseline'" in baseline_query("p1") and "'trial'" not in baseline_query("p1")
    assert "tags.`kdsearch.role` = 'trial'" in trial_query("p1")
