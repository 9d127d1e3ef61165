"""A small CNN for image classification, sized by width and depth."""

import torch
from torch import nn

from app.ml.mixing import Mixed
from app.ml.mixing.ops import interpolate
from app.ml.models.spec import ModelSpec


def conv_blocks(in_channels: int, width: int, depth: int,
                side: int) -> tuple[list[nn.Module], int]:
    """``depth`` conv-BN-ReLU blocks with channels width, 2·width, 4·width, 8·width…
    and a 2x2 max pool after each while the map is at least 2 wide; returns the
    blocks and their output channels."""
    blocks: list[nn.Module] = []
    channels = in_channels
    for i in range(depth):
        out = width * 2 ** min(i, 3)
        layers: list[nn.Module] = [nn.Conv2d(channels, out, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if side >= 2:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        blocks.append(nn.Sequential(*layers))
        channels = out
    return blocks, channels


class SmallCNN(nn.Module):
    """``depth`` conv-BN-ReLU blocks, channels width, 2·width, 4·width…; a 2x2 max
    pool after each block while the map is at least 2 pixels wide; then global
    average pooling, dropout and a linear head.

    Manifold mixup points: layer 0 is the input, layer i the output of block i
    (``mixing_layers``); ``forward(x, mixed)`` mixes there when ``mixed.layer`` is set.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int],
                 width: int = 32, depth: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        blocks, channels = conv_blocks(in_channels, width, depth, min(image_size))
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    @property
    def mixing_layers(self) -> int:
        """Largest valid manifold-mixup layer."""
        return len(self.blocks)

    def forward(self, x: torch.Tensor, mixed: Mixed | None = None) -> torch.Tensor:
        layer = mixed.layer if mixed is not None else None
        if layer is not None and not 0 <= layer <= self.mixing_layers:
            raise ValueError(f"manifold layer {layer} outside 0..{self.mixing_layers}")
        h = x
        for i, block in enumerate(self.blocks):
            if layer == i:
                h = interpolate(h, h[mixed.index], mixed.lam)  # type: ignore[union-attr]
            h = block(h)
        if layer == len(self.blocks):
            h = interpolate(h, h[mixed.index], mixed.lam)  # type: ignore[union-attr]
        return self.head(self.pool(h))


def build_cnn(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> SmallCNN:
    """SmallCNN for per-sample ``input_shape`` (C, H, W); ``app.ml.models.build_model``
    builds every kind."""
    if spec.kind != "cnn":
        raise ValueError(f"unknown model kind {spec.kind!r}")
    c, h, w = input_shape
    return SmallCNN(c, num_classes, (h, w), spec.width, spec.depth, spec.dropout)
