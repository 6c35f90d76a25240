"""ResNet-18 for 32x32 images (He et al. 2016, the CIFAR variant asmallbit's ``resnet18`` trains).

The CIFAR form: a 3x3 stride-1 stem and no max-pool (the ImageNet 7x7/2 stem and pool would
shrink a 32x32 image to 8x8 before the first block), then four stages of two basic blocks
(64, 128, 256, 512 channels at ``width=64``). Normalisation is GroupNorm by default: BatchNorm's
running statistics are averaged across clients with different label mixes, which Hsieh et al.
(2020, "The Non-IID Data Quagmire") show hurts federated training; ``norm="batch"`` gives
the usual BatchNorm (its running statistics are federated like any float buffer).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..registry import register_model

Norm = Literal["group", "batch"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(32, max(1, channels // 2)), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (a 1x1 projection where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: stem, 4 stages x 2 basic blocks, global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, norm: Norm = "group"):
        super().__init__()
        if width < 1:
            raise ValueError(f"resnet18: width must be >= 1, got {width}")
        if norm not in ("group", "batch"):
            raise ValueError(f"resnet18: norm must be 'group' or 'batch', got {norm!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), _norm(norm, width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))
        return out


@register_model("resnet18")
def resnet18(
    input_shape: tuple[int, ...], num_classes: int, width: int = 64, norm: Norm = "group"
) -> nn.Module:
    """CIFAR-style ResNet-18 (11.2M parameters at ``width=64``); any image size works."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs (channels, height, width) inputs, got {input_shape}")
    return ResNet18(input_shape[0], num_classes, width=width, norm=norm)
