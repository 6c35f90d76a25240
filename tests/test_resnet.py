"""The CIFAR-style ResNet-18 of the model registry (asmallbit's ``resnet18``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedloom import build_model
from fedloom.params import flatten_module


def test_resnet18_is_the_cifar_variant_with_eleven_million_parameters() -> None:
    model = build_model("resnet18", (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # torchvision's, CIFAR stem
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv2d) and (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())  # the default norm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 16  # the stem, then 8 basic blocks of two


def test_resnet18_width_norm_and_shapes() -> None:
    torch.manual_seed(0)
    small = build_model("resnet18", (1, 28, 28), 7, width=4, norm="batch")
    assert small(torch.randn(5, 1, 28, 28)).shape == (5, 7)
    assert small.fc.in_features == 32  # width * 8
    # BatchNorm's running statistics are floats, so they are federated with the weights
    spec, _flat = flatten_module(small)
    assert any("running_mean" in e.name for e in spec.entries)
    with pytest.raises(ValueError, match="norm must be"):
        build_model("resnet18", (3, 32, 32), 10, norm="layer")
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        build_model("resnet18", (784,), 10)
