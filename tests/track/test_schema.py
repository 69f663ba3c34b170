"""kdsearch.track.schema: the one ranking of trials, trial statuses and the noise of a metric."""

from __future__ import annotations

import math

import pytest

from kdsearch.track.schema import (
    NOISY_SE,
    Status,
    TrialRow,
    best_row,
    rank_rows,
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
