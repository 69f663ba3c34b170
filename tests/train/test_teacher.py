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


def test_a_teacher_pretrained_on_a_source_set_starts_from_that_backbone(
        context: TrialContext, tmp_path: Path) -> None:
    from kdsearch.config import Data, Pretrain
    from kdsearch.models import build_model
    from kdsearch.models.checkpoints import load_teacher
    from kdsearch.train.teacher import PRETRAINED_FILE

    source = Data(format="synthetic", root=str(tmp_path / "source"),
                  synthetic={"train_per_class": 3, "val_per_class": 1, "num_frames": 12,
                             "size": 32, "seed": 5})
    teacher = context.cfg.teacher.model_copy(update={
        "pretrain": Pretrain(data=source, epochs=1, lr=0.002), "epochs": 0})
    cfg = context.cfg.model_copy(update={"teacher": teacher,
                                         "storage": str(tmp_path / "results")})
    data = dataset(context.cfg)
    said: list[str] = []
    result = prepare_teacher(cfg, data, log=said.append)
    assert any("pretraining on 12 videos of 4 classes" in line for line in said), said
    (backbone_file,) = (tmp_path / "results" / "teachers").glob(f"pretrained-*/{PRETRAINED_FILE}")
    backbone = torch.load(backbone_file, weights_only=True)
    # With 0 fine-tuning epochs the teacher is the pretrained backbone with a new head.
    fine = load_teacher(str(result.path), torch.device("cpu")).model.state_dict()
    head = [k for k in backbone if k.startswith("head") or k.startswith("fc")]
    for name, value in backbone.items():
        if name not in head:
            assert torch.equal(fine[name], value), name
    fresh = build_model("small3d", 4, "none", "teacher").model.state_dict()
    assert not all(torch.equal(fresh[k], backbone[k]) for k in backbone if k not in head)
    # The same settings and source reuse the backbone; other pretraining settings do not.
    said.clear()
    again = prepare_teacher(cfg, data, log=said.append)
    assert again.reused and again.path == result.path
    other = cfg.model_copy(update={"teacher": teacher.model_copy(update={
        "pretrain": Pretrain(data=source, epochs=2, lr=0.002)})})
    assert prepare_teacher(other, data, log=said.append).path != result.path
    assert len(list((tmp_path / "results" / "teachers").glob("pretrained-*"))) == 2
