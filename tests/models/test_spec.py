"""kdsearch.models._spec: model specs and the classification head of a model."""

from __future__ import annotations

import pytest
from torch import nn

from kdsearch.models import (
    ModelSpec,
    create_model,
    get_head,
    get_spec,
    mark_head,
)

from .helpers import NUM_CLASSES


def test_model_spec_rejects_bad_fields() -> None:
    spec = get_spec("tiny3d")
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    with pytest.raises(ValueError, match="roles is \\['coach'\\]"):
        ModelSpec(**{**fields, "roles": frozenset({"coach"})})
    with pytest.raises(ValueError, match="source is 'timm'"):
        ModelSpec(**{**fields, "source": "timm"})
    with pytest.raises(ValueError, match="pretrained is 'kinetics400', so weights_file"):
        ModelSpec(**{**fields, "pretrained": "kinetics400"})


def test_get_head_of_foreign_models() -> None:
    plain = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert get_head(plain) is plain[2]
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        get_head(nn.Conv1d(1, 1, 1))
    with pytest.raises(TypeError, match="head '0' of Sequential is not an nn.Linear"):
        mark_head(nn.Sequential(nn.ReLU()), "0")


def test_get_head_through_wrapper() -> None:
    model = create_model("tiny3d", NUM_CLASSES)
    wrapper = nn.Module()
    wrapper.module = model  # as DistributedDataParallel holds it
    assert get_head(wrapper) is get_head(model)

