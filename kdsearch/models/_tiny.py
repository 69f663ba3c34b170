"""Small 3D CNNs of kdsearch itself, sized for CPU demos on 8x64x64 clips (no published weights).

``tiny3d``, ``tiny3d_wide`` and ``tiny_r2plus1d`` are students; ``small3d``, a residual network
an order of magnitude bigger, is the teacher of the CPU demo.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.models._registry import register_model
from kdsearch.models._spec import KINETICS_TV_MEAN, KINETICS_TV_STD, ModelSpec, mark_head

Triple = tuple[int, int, int]
# Spatial stride on every stage, temporal stride on the middle ones: 8x64x64 -> 2x4x4.
TINY_STRIDES: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
SMALL_STRIDES: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))


def conv_bn_relu(cin: int, cout: int, kernel: Triple, stride: Triple) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


def factorised_block(cin: int, cout: int, stride: Triple) -> nn.Sequential:
    """(2+1)D block: a 1x3x3 spatial conv, then a 3x1x1 temporal one (Tran et al. 2018).

    The middle width matches the parameter count of one 3x3x3 conv, as in R(2+1)D.
    """
    mid = (27 * cin * cout) // (9 * cin + 3 * cout)
    return nn.Sequential(
        conv_bn_relu(cin, mid, (1, 3, 3), (1, stride[1], stride[2])),
        conv_bn_relu(mid, cout, (3, 1, 1), (stride[0], 1, 1)),
    )


class ResBlock3d(nn.Module):
    """Basic 3D residual block: two 3x3x3 convs, a 1x1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: Triple) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, (3, 3, 3), stride)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout or stride != (1, 1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class VideoCNN(nn.Module):
    """Feature stages, global average pooling over (T, H, W), dropout and a linear head."""

    def __init__(self, features: nn.Module, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        mark_head(self, "fc")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


def tiny3d(
    num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 64), factorised: bool = False
) -> VideoCNN:
    """Three 3x3x3 conv-BN-ReLU stages and a spatial 1x3x3 one (~100k parameters at 16-64).

    With ``factorised`` the 3x3x3 convs become (2+1)D blocks of the same parameter count.
    """
    layers: list[nn.Module] = []
    cin = 3
    for i, (cout, stride) in enumerate(zip(widths, TINY_STRIDES, strict=True)):
        if i == len(widths) - 1:
            layers.append(conv_bn_relu(cin, cout, (1, 3, 3), stride))
        elif factorised:
            layers.append(factorised_block(cin, cout, stride))
        else:
            layers.append(conv_bn_relu(cin, cout, (3, 3, 3), stride))
        cin = cout
    return VideoCNN(nn.Sequential(*layers), cin, num_classes, dropout=0.3)


def small3d(num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> VideoCNN:
    """A 3x5x5 stem and four residual stages (a ResNet-10-like 3D network).

    The stem keeps full resolution: on the small CPU-demo clips, a strided stem loses the
    few-pixel ball, and the teacher then learns no better than the tiny students.
    """
    layers: list[nn.Module] = [conv_bn_relu(3, widths[0], (3, 5, 5), (1, 1, 1))]
    cin = widths[0]
    for cout, stride in zip(widths, SMALL_STRIDES, strict=True):
        layers.append(ResBlock3d(cin, cout, stride))
        cin = cout
    return VideoCNN(nn.Sequential(*layers), cin, num_classes, dropout=0.3)


def _register() -> None:
    for name, roles, builder, description in [
        ("tiny3d", {"student"}, tiny3d, "4-stage 3D CNN, widths 16/32/64/64 (CPU demo)"),
        ("tiny3d_wide", {"student"}, lambda n: tiny3d(n, (32, 64, 128, 128)),
         "tiny3d with doubled widths 32/64/128/128 (CPU demo)"),
        ("tiny_r2plus1d", {"student"}, lambda n: tiny3d(n, factorised=True),
         "tiny3d with (2+1)D factorised convs (CPU demo)"),
        ("small3d", {"teacher"}, small3d,
         "residual 3D CNN, widths 32/64/128/256 (CPU demo teacher)"),
    ]:  # fmt: skip
        spec = ModelSpec(
            name=name,
            roles=frozenset(roles),
            source="kdsearch",
            clip=(8, 64),
            # Kinetics statistics, so the demo's clips are normalised like the real teachers'.
            mean=KINETICS_TV_MEAN,
            std=KINETICS_TV_STD,
            pretrained=None,
            weights_file=None,
            weights_url=None,
            description=description,
        )
        register_model(spec, builder)


_register()
