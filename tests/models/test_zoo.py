"""kdsearch.models._zoo: the published architectures, their specs and their quirks."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torchvision.models import video as tv_video

from kdsearch.models import (
    FrameResNet,
    create_model,
    get_spec,
)

from .helpers import NUM_CLASSES, random_clip


def test_mvit_rejects_other_clip_shapes() -> None:
    model = create_model("mvit_v2_s", NUM_CLASSES)
    with pytest.raises(ValueError, match=re.escape("[B, 3, 16, 224, 224]")):
        model(torch.randn(1, 3, 8, 64, 64))


def test_resnet18_tsn_frame_logits_average_to_logits() -> None:
    model = create_model("resnet18_tsn", NUM_CLASSES).eval()
    assert isinstance(model, FrameResNet)
    clip = random_clip("resnet18_tsn", frames=5, size=32, batch=2)
    with torch.no_grad():
        frames = model.frame_logits(clip)
        assert frames.shape == (2, 5, NUM_CLASSES)
        assert torch.allclose(frames.mean(dim=1), model(clip), atol=1e-6)
        # Frame t of the clip alone gives frame t's logits: frames are classified independently.
        single = model.frame_logits(clip[:, :, 2:3])
        assert torch.allclose(single[:, 0], frames[:, 2], atol=1e-5)



@pytest.mark.parametrize(
    ("name", "enum"),
    [
        ("r3d_18", tv_video.R3D_18_Weights.KINETICS400_V1),
        ("mc3_18", tv_video.MC3_18_Weights.KINETICS400_V1),
        ("r2plus1d_18", tv_video.R2Plus1D_18_Weights.KINETICS400_V1),
        ("mvit_v2_s", tv_video.MViT_V2_S_Weights.KINETICS400_V1),
        ("resnet18_tsn", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    ],
)
def test_torchvision_specs_match_weight_enums(name: str, enum: torchvision.models.Weights) -> None:
    spec = get_spec(name)
    assert spec.weights_url == enum.url
    assert spec.weights_file == enum.url.rsplit("/", 1)[1]
    transform = enum.transforms()
    assert spec.mean == pytest.approx(tuple(transform.mean))
    assert spec.std == pytest.approx(tuple(transform.std))
    assert spec.clip[1] == transform.crop_size[0]


def test_pytorchvideo_specs_match_hub_urls() -> None:
    from pytorchvideo.models.hub import resnet, x3d

    for name in ["x3d_xs", "x3d_s", "x3d_m"]:
        assert get_spec(name).weights_url == x3d.checkpoint_paths[name]
    assert get_spec("slow_r50").weights_url == resnet.checkpoint_paths["slow_r50"]

