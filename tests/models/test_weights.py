"""kdsearch.models._weights: published weights from the hub cache, checkpoints from files;
offline, a missing published file names its URL (downloading: test_download.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import video as tv_video

from kdsearch.models import (
    WeightsError,
    create_model,
    get_head,
    get_spec,
    list_models,
    weights_path,
)

from .helpers import NUM_CLASSES, assert_same_tensors, random_clip


def test_weights_path_in_hub_cache(hub_checkpoints: Path) -> None:
    assert weights_path(get_spec("r3d_18")) == hub_checkpoints / "r3d_18-b3b3357e.pth"
    with pytest.raises(WeightsError, match="model 'tiny3d' has no published weights"):
        weights_path(get_spec("tiny3d"))


def test_kinetics_weights_from_hub_cache(hub_checkpoints: Path) -> None:
    saved = tv_video.r3d_18(weights=None).state_dict()  # 400-class head, as published
    torch.save(saved, hub_checkpoints / "r3d_18-b3b3357e.pth")
    model = create_model("r3d_18", NUM_CLASSES, weights="kinetics400", role="teacher")
    assert_same_tensors(model.state_dict(), saved, skip="fc.")
    head = get_head(model)
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (512, NUM_CLASSES)


def test_imagenet_weights_for_frame_resnet(hub_checkpoints: Path) -> None:
    saved = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(saved, hub_checkpoints / "resnet18-f37072fd.pth")
    model = create_model("resnet18_tsn", NUM_CLASSES, weights="imagenet")
    assert_same_tensors(model.state_dict(), saved, skip="fc.")
    assert get_head(model).out_features == NUM_CLASSES


def test_pytorchvideo_model_state_checkpoint(hub_checkpoints: Path) -> None:
    from pytorchvideo.models.hub import x3d_xs

    published = x3d_xs(pretrained=False, head_activation=None).eval()
    saved = published.state_dict()
    torch.save({"model_state": saved, "epoch": 300}, hub_checkpoints / "X3D_XS.pyth")
    model = create_model("x3d_xs", 400, weights="kinetics400").eval()
    assert_same_tensors(model.state_dict(), saved, skip="blocks.5.proj.")
    # At the recommended clip the adaptive head pool is the published fixed one.
    get_head(model).load_state_dict(published.blocks[5].proj.state_dict())
    clip = random_clip("x3d_xs", *get_spec("x3d_xs").clip, batch=2)
    with torch.no_grad():
        assert torch.allclose(model(clip), published(clip), atol=1e-5)


def test_missing_hub_file_names_path_and_url(
    hub_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDSEARCH_OFFLINE", "1")
    path = hub_checkpoints / "mc3_18-a90a0ba3.pth"
    url = "https://download.pytorch.org/models/mc3_18-a90a0ba3.pth"
    with pytest.raises(WeightsError, match=re.escape(f"'{path}': download {url} and place it")):
        create_model("mc3_18", NUM_CLASSES, weights="kinetics400")


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).pretrained])
def test_missing_weights_offline_never_download(
    name: str, hub_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("kdsearch must not download offline")

    monkeypatch.setenv("KDSEARCH_OFFLINE", "1")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    spec = get_spec(name)
    with pytest.raises(WeightsError) as info:
        create_model(name, NUM_CLASSES, weights=str(spec.pretrained))
    message = str(info.value)
    assert "\n" not in message
    assert str(weights_path(spec)) in message
    assert str(spec.weights_url) in message


def test_hub_file_of_another_model(hub_checkpoints: Path) -> None:
    torch.save(create_model("tiny3d", 400).state_dict(), hub_checkpoints / "r3d_18-b3b3357e.pth")
    with pytest.raises(WeightsError, match="does not fit model 'r3d_18': missing keys: stem"):
        create_model("r3d_18", NUM_CLASSES, weights="kinetics400")


@pytest.mark.parametrize("wrap", ["plain", "model_state", "state_dict", "model", "ddp"])
def test_fine_tuned_checkpoint_round_trips(tmp_path: Path, wrap: str) -> None:
    model = create_model("tiny_r2plus1d", NUM_CLASSES).eval()
    state = model.state_dict()
    if wrap == "ddp":
        obj: object = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state if wrap == "plain" else {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "student.pt")
    loaded = create_model("tiny_r2plus1d", NUM_CLASSES, weights=str(tmp_path / "student.pt"))
    clip = random_clip("tiny_r2plus1d", batch=2)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(clip), model(clip))


def test_backbone_checkpoint_with_other_head(tmp_path: Path) -> None:
    saved = create_model("tiny3d", 10).state_dict()
    torch.save(saved, tmp_path / "backbone.pth")
    model = create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "backbone.pth")
    assert_same_tensors(model.state_dict(), saved, skip="fc.")
    assert get_head(model).out_features == NUM_CLASSES
    # A backbone saved without its head loads too.
    torch.save({k: v for k, v in saved.items() if not k.startswith("fc.")}, tmp_path / "b.pth")
    model = create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "b.pth")
    assert_same_tensors(model.state_dict(), saved, skip="fc.")


def test_checkpoint_with_wrong_backbone(tmp_path: Path) -> None:
    torch.save(create_model("tiny3d_wide", NUM_CLASSES).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(WeightsError, match=r"shape mismatch: features\.0\.0\.weight"):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "wide.pt")
    state = create_model("tiny3d", NUM_CLASSES).state_dict()
    state["renamed.weight"] = state.pop("features.1.0.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(
        WeightsError, match="missing keys: features.1.0.weight; unexpected keys: renamed.weight"
    ):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "renamed.pt")


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=re.escape(f"'{tmp_path / 'gone.pt'}' does not exist")):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "gone.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not be read"):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "list.pt")
