"""kdsearch.models._registry: every registered model built and run, lookups by name and role."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from kdsearch.models import (
    ModelSpec,
    UnknownModelError,
    WeightsError,
    _registry,
    create_model,
    get_head,
    get_spec,
    list_models,
    register_model,
)

from .helpers import NUM_CLASSES, assert_same_tensors, random_clip


@pytest.mark.parametrize("name", list_models())
def test_forward_every_model(name: str) -> None:
    model = create_model(name, NUM_CLASSES).eval()
    head = get_head(model)
    assert isinstance(head, nn.Linear)
    assert head.out_features == NUM_CLASSES
    with torch.no_grad():
        logits = model(random_clip(name))
        assert logits.shape == (1, NUM_CLASSES)
        assert torch.isfinite(logits).all()
        if name != "mvit_v2_s":  # one forward of it is slow enough
            # The layer get_head returns is the one that produces the logits.
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, 2.0)
            assert torch.allclose(model(random_clip(name)), torch.full((1, NUM_CLASSES), 2.0))


@pytest.mark.parametrize("name", [n for n in list_models() if n != "mvit_v2_s"])
def test_smallest_clip_every_model(name: str) -> None:
    model = create_model(name, NUM_CLASSES).eval()
    with torch.no_grad():
        assert model(random_clip(name, frames=4, size=32)).shape == (1, NUM_CLASSES)



def test_same_seed_same_model() -> None:
    torch.manual_seed(1)
    first = create_model("tiny3d", NUM_CLASSES).state_dict()
    torch.manual_seed(1)
    second = create_model("tiny3d", NUM_CLASSES).state_dict()
    assert_same_tensors(second, first, skip="\0")


# ---- registry ------------------------------------------------------------------------------


def test_list_models_by_role() -> None:
    assert list_models("student") == sorted(
        ["x3d_xs", "r3d_18", "r2plus1d_18", "mc3_18", "resnet18_tsn"]
        + ["tiny3d", "tiny3d_wide", "tiny_r2plus1d"]
    )
    assert list_models("teacher") == sorted(
        ["r3d_18", "r2plus1d_18", "mc3_18", "x3d_m", "x3d_s", "slow_r50", "mvit_v2_s", "small3d"]
    )
    assert list_models() == sorted(set(list_models("student")) | set(list_models("teacher")))


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'foo'; valid students: mc3_18, "):
        create_model("foo", NUM_CLASSES, role="student")
    with pytest.raises(UnknownModelError, match="valid models: .*mvit_v2_s.*tiny3d"):
        get_spec("foo")


def test_wrong_role() -> None:
    with pytest.raises(UnknownModelError, match="model 'tiny3d' is not a teacher; .*small3d"):
        create_model("tiny3d", NUM_CLASSES, role="teacher")
    with pytest.raises(UnknownModelError, match="model 'slow_r50' is not a student"):
        get_spec("slow_r50", role="student")
    assert get_spec("r3d_18", role="student") is get_spec("r3d_18", role="teacher")


def test_invalid_role() -> None:
    with pytest.raises(ValueError, match="role is 'techer'"):
        list_models("techer")  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_invalid_num_classes(num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes is"):
        create_model("tiny3d", num_classes)


def test_register_model_with_unmarked_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    spec = ModelSpec(
        name="flat", roles=frozenset({"student"}), source="kdsearch", clip=(4, 32),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pretrained=None, weights_file=None,
        weights_url=None, description="test model",
    )  # fmt: skip

    def build(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 32 * 32, 7), nn.Linear(7, num_classes))

    register_model(spec, build)
    model = create_model("flat", NUM_CLASSES)
    assert get_head(model) is model.get_submodule("2")
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="model 'flat' is already registered"):
        register_model(spec, build)



@pytest.mark.parametrize(
    ("name", "weights", "available"),
    [("tiny3d", "kinetics400", "none"), ("r3d_18", "imagenet", "kinetics400")],
)
def test_pretrained_kind_must_match_spec(name: str, weights: str, available: str) -> None:
    message = f"model '{name}' has no {weights} weights (available: {available})"
    with pytest.raises(WeightsError, match=re.escape(message)):
        create_model(name, NUM_CLASSES, weights=weights)


def test_unknown_weights_value() -> None:
    with pytest.raises(WeightsError, match="weights is 'kinetic400', but must be 'none'"):
        create_model("tiny3d", NUM_CLASSES, weights="kinetic400")

