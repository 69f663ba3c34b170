"""kdsearch.train.teacher: the teacher stage, reused for the same settings and data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdsearch.config import ConfigError
from kdsearch.train.teacher import prepare_teacher
from kdsearch.train.trial import TrialContext

from .helpers import dataset


def test_teacher_is_reused_for_the_same_settings_and_data(context: TrialContext) -> None:
    data = dataset(context.cfg)
    again = prepare_teacher(context.cfg, data, log=lambda _: None)
    assert again.reused and str(again.path) == context.teacher_path
    other = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"epochs": 2})})
    assert prepare_teacher(other, data, log=lambda _: None).path != again.path
    cache_only = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"cache_views": 7, "cache": False})})
    assert prepare_teacher(cache_only, data, log=lambda _: None).path == again.path


def test_teacher_weights_that_do_not_fit_are_a_config_error(context: TrialContext,
                                                            tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    cfg = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"weights": str(bad), "epochs": 3})})
    with pytest.raises(ConfigError, match=r"^teacher.weights: .*does not fit model 'small3d'"):
        prepare_teacher(cfg, dataset(cfg), log=lambda _: None)
