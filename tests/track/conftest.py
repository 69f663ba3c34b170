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


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpickling anything raises: ``pickle``'s and ``cloudpickle``'s loaders, and so
    ``torch.load(weights_only=False)``, which unpickles through ``pickle.Unpickler``
    (``weights_only=True`` uses torch's own reader of plain data)."""
    import pickle

    import cloudpickle

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used")

    class Refused(pickle.Unpickler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            refused()

    monkeypatch.setattr(pickle, "Unpickler", Refused)
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refused)
    for name in ("load", "loads"):
        monkeypatch.setattr(cloudpickle, name, refused)
