"""Fixtures shared by every test folder.

The tests mirror the package: tests/<subpackage>/test_<module>.py (each folder a package, so
the same basename may appear in two folders) and tests/test_<module>.py for the top-level
modules. Fixtures of one folder live in its conftest.py, shared helpers in a plain module
(helpers.py, records.py, spaces.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    # Trial processes unpickle trainables defined in test modules by name (test_storage's,
    # search.helpers'; each test folder is a package under tests/): let them import.
    tests_dir = os.path.dirname(__file__)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()

