"""Fixtures of the training tests: the tiny space file with its data and fine-tuned teacher."""

from __future__ import annotations

import pytest

from kdsearch.config.load import load_space
from kdsearch.testing import write_tiny_space
from kdsearch.train.teacher import prepare_teacher
from kdsearch.train.trial import TrialContext

from .helpers import dataset


@pytest.fixture(scope="session")
def context(tmp_path_factory: pytest.TempPathFactory) -> TrialContext:
    """What a trial of the tiny space file gets: its data and its teacher (trained once)."""
    folder = tmp_path_factory.mktemp("trial")
    cfg = load_space(write_tiny_space(folder), cwd=folder)
    data = dataset(cfg)
    teacher = prepare_teacher(cfg, data, log=lambda _: None)
    return TrialContext(cfg, data.classes, str(teacher.path), data.train, data.val)
