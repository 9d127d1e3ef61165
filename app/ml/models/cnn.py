"""A small CNN for image classification, sized by width and depth."""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "cnn"
    width: int = 32
    depth: int = 3
    dropout: float = 0.0


class SmallCNN(nn.Module):
    """``depth`` conv-BN-ReLU blocks, channels width, 2·width, 4·width…; a 2x2 max
    pool after each block while the map is at least 2 pixels wide; then global
    average pooling, dropout and a linear head.

    ``features`` and ``head`` are separate so hidden representations can be mixed.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int],
                 width: int = 32, depth: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, min(image_size)
        for i in range(depth):
            out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Model for per-sample ``input_shape`` (C, H, W)."""
    if spec.kind != "cnn":
        raise ValueError(f"unknown model kind {spec.kind!r}")
    c, h, w = input_shape
    return SmallCNN(c, num_classes, (h, w), spec.width, spec.depth, spec.dropout)
