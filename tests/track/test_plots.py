"""kdsearch.track.plots: the PNG plots of the report, drawn or skipped, never an error."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from kdsearch.track.plots import attempt
from kdsearch.track.report import study_from_records, write_report

from .records import (
    ALL_PLOTS,
    PNG_SIGNATURE,
    RECORDS,
    completed,
    make_search,
    written_plots,
)


def test_pngs_are_real_images(report: tuple[Path, list[Path]]) -> None:
    _, paths = report
    pngs = [p for p in paths if p.suffix == ".png"]
    assert written_plots(paths) == ALL_PLOTS
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert png.stat().st_size > 10_000
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.width >= 400 and image.height >= 300


def test_matplotlib_state_is_left_as_found(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    keep = plt.figure()
    rc = dict(matplotlib.rcParams)
    try:
        write_report(RECORDS[:8], make_search(), tmp_path)
        assert plt.get_fignums() == [keep.number]
        assert dict(matplotlib.rcParams) == rc  # optuna's ggplot style did not stick
    finally:
        plt.close(keep)


def test_completed_trial_missing_a_param_still_plots(tmp_path: Path) -> None:
    odd = dataclasses.replace(completed("c9", 0.9, 4),
                              params={"alpha": 0.5, "temperature": 3.0, "backbone": "nope"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no noise in the driver's log
        paths = write_report([*RECORDS[:3], odd], make_search(), tmp_path)
    assert written_plots(paths) == ALL_PLOTS
    assert study_from_records([odd], make_search()).trials[0].params == {
        "alpha": 0.5, "temperature": 3.0}


def test_a_plot_that_raises_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise ValueError("not enough trials")

    with caplog.at_level(logging.WARNING, logger="kdsearch.track.report"):
        assert attempt("param_importances", broken) is None
    assert "param_importances not drawn: ValueError: not enough trials" in caplog.text
