"""Published architectures from torchvision and pytorchvideo, always built without weights.

Constructors are called with ``weights=None`` / ``pretrained=False`` (anything else downloads);
published weights are loaded from the local torch hub cache by ``create_model``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models import video as tv_video
from torchvision.models.resnet import BasicBlock

from kdsearch.models._registry import register_model
from kdsearch.models._spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_PTV_MEAN,
    KINETICS_PTV_STD,
    KINETICS_TV_MEAN,
    KINETICS_TV_STD,
    ModelSpec,
    mark_head,
)

_TV_URL = "https://download.pytorch.org/models"
_PTV_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
MVIT_INPUT = (16, 224, 224)
_MVIT_FILE = "mvit_v2_s-ae3be167.pth"


def _pytorchvideo_hub() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # fvcore (imported by pytorchvideo) calls the deprecated torch.jit.script at import.
            warnings.simplefilter("ignore", FutureWarning)
            from pytorchvideo.models import hub
    except ImportError as err:
        raise ImportError(
            f"pytorchvideo models need the pytorchvideo package ({err}); "
            "install it with `pip install pytorchvideo==0.1.5`"
        ) from err
    return hub


def _pytorchvideo(fn_name: str, **kwargs: Any) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        model: nn.Module = getattr(_pytorchvideo_hub(), fn_name)(
            pretrained=False, model_num_class=num_classes, **kwargs
        )
        blocks = model.get_submodule("blocks")
        assert isinstance(blocks, nn.ModuleList)
        head = blocks[-1]
        pool = head.get_submodule("pool")
        # The hub sizes the head's AvgPool3d for one clip shape; global pooling is identical
        # there (the kernel covers the whole feature map) and works for every other shape.
        if isinstance(pool, nn.AvgPool3d):
            head.pool = nn.AdaptiveAvgPool3d(1)
        elif isinstance(getattr(pool, "pool", None), nn.AvgPool3d):  # X3D's ProjectedPool
            pool.pool = nn.AdaptiveAvgPool3d(1)
        head.activation = nn.Identity()  # X3D's head ends in a softmax; KD needs logits
        return mark_head(model, f"blocks.{len(blocks) - 1}.proj")

    return build


def _torchvision_video(fn: Callable[..., nn.Module], head: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return mark_head(fn(weights=None, num_classes=num_classes), head)

    return build


def _check_mvit_input(module: nn.Module, args: tuple[Any, ...]) -> None:
    shape = tuple(args[0].shape)
    if len(shape) != 5 or shape[1] != 3 or shape[2:] != MVIT_INPUT:
        t, h, w = MVIT_INPUT
        raise ValueError(
            f"mvit_v2_s input is {list(shape)}, but must be [B, 3, {t}, {h}, {w}]: its "
            "positional and relative-position embeddings are sized for that clip"
        )


def _mvit_v2_s(num_classes: int) -> nn.Module:
    model = tv_video.mvit_v2_s(weights=None, num_classes=num_classes)
    model.register_forward_pre_hook(_check_mvit_input)
    return mark_head(model, "head.1")


class FrameResNet(ResNet):
    """A 2D ResNet applied to every frame, logits averaged over time (TSN-style).

    The student of SoccerKDNet. Its state dict is torchvision's ResNet's, so ImageNet
    checkpoints load as they are.
    """

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame logits ``[B, T, C]`` of clips ``[B, 3, T, H, W]`` (e.g. for majority vote)."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return super().forward(frames).reshape(b, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frame_logits(x).mean(dim=1)


def _resnet18_tsn(num_classes: int) -> nn.Module:
    model = FrameResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    return mark_head(model, "fc")


def _kinetics(
    name: str, roles: set[str], source: str, clip: tuple[int, int], file: str, description: str,
    stride: int,
) -> ModelSpec:
    # torchvision's MViT was trained with pytorchvideo's normalisation, not its video ResNets'.
    tv_norm = source == "torchvision" and name != "mvit_v2_s"
    return ModelSpec(
        name=name,
        roles=frozenset(roles),
        source=source,
        clip=clip,
        mean=KINETICS_TV_MEAN if tv_norm else KINETICS_PTV_MEAN,
        std=KINETICS_TV_STD if tv_norm else KINETICS_PTV_STD,
        pretrained="kinetics400",
        weights_file=file,
        weights_url=f"{_TV_URL if source == 'torchvision' else _PTV_URL}/{file}",
        description=description,
        stride=stride,
    )


def _register() -> None:
    both = {"student", "teacher"}
    for name, fn, file, acc, what in [
        ("r3d_18", tv_video.r3d_18, "r3d_18-b3b3357e.pth", 63.2, "3D ResNet-18"),
        ("mc3_18", tv_video.mc3_18, "mc3_18-a90a0ba3.pth", 63.96, "mixed-conv ResNet-18"),
        ("r2plus1d_18", tv_video.r2plus1d_18, "r2plus1d_18-91a641e6.pth", 67.46, "R(2+1)D-18"),
    ]:
        desc = f"{what} (Tran et al. 2018), Kinetics-400 acc@1 {acc}"
        # torchvision's reference recipe: 16 frames at 15 fps of 30 fps videos.
        spec = _kinetics(name, both, "torchvision", (16, 112), file, desc, stride=2)
        register_model(spec, _torchvision_video(fn, "fc"))
    desc = "MViTv2-S (Li et al. 2022), Kinetics-400 acc@1 80.76; input exactly 16x224x224"
    spec = _kinetics("mvit_v2_s", {"teacher"}, "torchvision", (16, 224), _MVIT_FILE, desc,
                     stride=4)
    register_model(spec, _mvit_v2_s)
    # pytorchvideo's model zoo: frames x sampling rate (at 30 fps) of each model's recipe.
    for name, roles, clip, stride, file, acc in [
        ("x3d_xs", {"student"}, (4, 160), 12, "X3D_XS.pyth", 69.12),
        ("x3d_s", {"teacher"}, (13, 160), 6, "X3D_S.pyth", 73.33),
        ("x3d_m", {"teacher"}, (16, 224), 5, "X3D_M.pyth", 75.94),
    ]:
        desc = f"{name.upper().replace('_', '-')} (Feichtenhofer 2020), Kinetics-400 acc@1 {acc}"
        register_model(
            _kinetics(name, roles, "pytorchvideo", clip, file, desc, stride),
            _pytorchvideo(name),
        )
    desc = "Slow-only ResNet-50 8x8 (Feichtenhofer et al. 2019), Kinetics-400 acc@1 74.58"
    spec = _kinetics("slow_r50", {"teacher"}, "pytorchvideo", (8, 224), "SLOW_8x8_R50.pyth", desc,
                     stride=8)
    register_model(spec, _pytorchvideo("slow_r50"))
    spec = ModelSpec(
        name="resnet18_tsn",
        roles=frozenset({"student"}),
        source="torchvision",
        clip=(8, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained="imagenet",
        weights_file="resnet18-f37072fd.pth",
        weights_url=f"{_TV_URL}/resnet18-f37072fd.pth",
        description="2D ResNet-18 on every frame, logits averaged over time (SoccerKDNet "
        "student), ImageNet-1k acc@1 69.76",
        frame_level=True,
        stride=4,  # 8 frames spread over about a second, as TSN's segments
    )
    register_model(spec, _resnet18_tsn)


_register()
