"""Fixtures of the tracking tests: the report of the made-up search, written once."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsearch.track.report import write_report

from .records import RECORDS, make_search


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("report")
    return out, write_report(RECORDS, make_search(), out)
