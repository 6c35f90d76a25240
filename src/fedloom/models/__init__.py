"""Built-in models, registered by name. Add your own with :func:`fedloom.register_model`.

A model factory takes ``(input_shape, num_classes)`` and returns a fresh ``nn.Module``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..registry import MODELS, register_model
from .resnet import ResNet18, resnet18


@register_model("logreg")
def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (the FedProx synthetic experiments' model)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> nn.Module:
    """The FedAvg paper's "2NN": two hidden layers of 200 ReLU units (784-200-200-10)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register_model("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The FedAvg paper's CNN: conv5x5-32, pool, conv5x5-64, pool, fc512, fc10 (1.66M params)."""
    c, h, w = _image_shape(input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


@register_model("small_cnn")
def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A small CNN (conv3x3-16, pool, conv3x3-32, pool, fc128) for quick runs on a laptop."""
    c, h, w = _image_shape(input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"a CNN needs (channels, height, width) inputs, got shape {input_shape}")
    c, h, w = input_shape
    return c, h, w


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build a registered model by name."""
    model: nn.Module = MODELS.get(name)(tuple(input_shape), num_classes, **kwargs)
    return model


__all__ = [
    "MODELS",
    "ResNet18",
    "build_model",
    "cnn",
    "logreg",
    "mlp",
    "register_model",
    "resnet18",
    "small_cnn",
]
