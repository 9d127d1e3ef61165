"""Image classifiers by kind: the mixup paper's PreAct ResNet-18, Wide ResNets, and
torchvision / timm models by name.

Every model here takes ``forward(x, mixed=None)`` like ``SmallCNN`` and mixes at
manifold layer ``mixed.layer`` (0 = the input, i = the output of stage i, up to
``mixing_layers``) with ``interpolate(h, h[mixed.index], mixed.lam)``. Built
with ``num_classes = dim`` they are the multimodal image tower (``ImageEncoder``).
"""

import difflib
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from app.ml.mixing import Mixed
from app.ml.mixing.ops import interpolate
from app.ml.models.cnn import SmallCNN
from app.ml.models.spec import (
    IMAGE_KINDS,
    MULTIMODAL_KINDS,
    ModelSpec,
    ModelSpecError,
    image_family,
    wide_resnet_blocks,
)
from app.ml.models.vision_libs import MissingPackage, import_timm, import_torchvision

# below this many pixels on the short side an ImageNet ResNet stem (7x7 stride-2
# conv + max-pool, /4) throws most of the image away: use the CIFAR stem instead
SMALL_IMAGE = 64


def _check_layer(mixed: Mixed | None, top: int) -> int | None:
    layer = mixed.layer if mixed is not None else None
    if layer is not None and not 0 <= layer <= top:
        raise ValueError(f"manifold layer {layer} outside 0..{top}")
    return layer


def _mix(h: torch.Tensor, mixed: Mixed) -> torch.Tensor:
    return interpolate(h, h[mixed.index], mixed.lam)


# --- PreAct ResNet-18 (He et al. 2016; the mixup paper's CIFAR model) -----------------

class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity shortcut, or a 1x1 conv
    on the pre-activated input where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 as in the mixup paper's CIFAR code: a 3x3 stride-1 stem conv
    (no max-pool), [2, 2, 2, 2] pre-activation basic blocks with widths
    width·(1, 2, 4, 8) (the paper: 64), stages 2-4 striding by 2, global average
    pooling and a linear head (dropout before it, 0 in the paper). 11,171,146
    parameters at width 64 with 10 classes.

    Manifold mixup points: 0 = the input, i = the output of stage i (1..4).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        stages, planes = [], width
        for i in range(4):
            out = width * 2 ** i
            stages.append(nn.Sequential(PreActBlock(planes, out, 1 if i == 0 else 2),
                                        PreActBlock(out, out, 1)))
            planes = out
        self.layers = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(planes, num_classes))

    @property
    def mixing_layers(self) -> int:
        """Largest valid manifold-mixup layer."""
        return len(self.layers)

    def forward(self, x: torch.Tensor, mixed: Mixed | None = None) -> torch.Tensor:
        layer = _check_layer(mixed, self.mixing_layers)
        if layer == 0:
            x = _mix(x, mixed)  # type: ignore[arg-type]
        h = self.conv1(x)
        for i, stage in enumerate(self.layers, start=1):
            h = stage(h)
            if layer == i:
                h = _mix(h, mixed)  # type: ignore[arg-type]
        return self.head(self.pool(h))


# --- Wide ResNet (Zagoruyko & Komodakis 2016) -------------------------------------------

class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3; the shortcut is the input, or a 1x1
    conv of the pre-activated input where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-widen: a 3x3 conv to 16 channels, three groups of (depth-4)/6
    wide blocks with 16·widen, 32·widen, 64·widen channels (strides 1, 2, 2), a
    final BN-ReLU, global average pooling and a linear head. WRN-28-10 with 10
    classes has 36,479,194 parameters.

    Manifold mixup points: 0 = the input, i = the output of group i (1..3).
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        n = wide_resnet_blocks(depth)
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        groups, planes = [], 16
        for i, out in enumerate(widths):
            blocks = [WideBlock(planes if j == 0 else out, out, (1 if i == 0 else 2) if j == 0
                                else 1, dropout) for j in range(n)]
            groups.append(nn.Sequential(*blocks))
            planes = out
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(planes, num_classes)
        for m in self.modules():  # the paper's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def mixing_layers(self) -> int:
        """Largest valid manifold-mixup layer."""
        return len(self.groups)

    def forward(self, x: torch.Tensor, mixed: Mixed | None = None) -> torch.Tensor:
        layer = _check_layer(mixed, self.mixing_layers)
        if layer == 0:
            x = _mix(x, mixed)  # type: ignore[arg-type]
        h = self.conv1(x)
        for i, group in enumerate(self.groups, start=1):
            h = group(h)
            if layer == i:
                h = _mix(h, mixed)  # type: ignore[arg-type]
        return self.head(self.pool(F.relu(self.bn(h))))


# --- torchvision / timm by name -----------------------------------------------------------

def _mix_output(mixed: Mixed, module: nn.Module, args: Any, output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"cannot mix the output of {type(module).__name__} (not a tensor)")
    return _mix(output, mixed)


class ZooModel(nn.Module):
    """A torchvision or timm model (``net``) with manifold mixup at ``points``:
    layer 0 is the input, layer i the output of submodule ``points[i-1]``
    (torchvision ResNets: layer1..layer4; timm: the modules its ``feature_info``
    lists; other torchvision models: the input only). The mixing hook lives only
    for the forward that asked for it, so copies and checkpoints see a plain model;
    the state dict is ``net``'s, under ``net.``."""

    def __init__(self, net: nn.Module, points: Sequence[str], library: str, name: str) -> None:
        super().__init__()
        self.net = net
        self.points = list(points)
        self.library, self.name = library, name

    @property
    def mixing_layers(self) -> int:
        """Largest valid manifold-mixup layer."""
        return len(self.points)

    def forward(self, x: torch.Tensor, mixed: Mixed | None = None) -> torch.Tensor:
        layer = _check_layer(mixed, self.mixing_layers)
        if layer == 0:
            x = _mix(x, mixed)  # type: ignore[arg-type]
        handle = None
        if layer:
            handle = self.net.get_submodule(self.points[layer - 1]).register_forward_hook(
                partial(_mix_output, mixed))
        try:
            out = self.net(x)
        finally:
            if handle is not None:
                handle.remove()
        # Inception/GoogLeNet return (logits, aux…) while training
        return out if isinstance(out, torch.Tensor) else out[0]


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _adapt_channels(net: nn.Module, in_channels: int) -> None:
    """The first conv (the stem: registered first in every torchvision model) takes
    ``in_channels`` instead of RGB."""
    for path, conv in net.named_modules():
        if isinstance(conv, nn.Conv2d):
            if conv.in_channels == in_channels:
                return
            if conv.groups != 1:
                break
            _replace(net, path, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,
                                          conv.stride, conv.padding, conv.dilation, 1,
                                          conv.bias is not None, conv.padding_mode))
            return
    raise ValueError(f"cannot adapt the stem of {type(net).__name__} to {in_channels} "
                     "input channels")


def _adapt_small_stem(net: nn.Module, image_size: tuple[int, int]) -> None:
    """A ResNet-style stem (``conv1`` 7x7 stride 2, then ``maxpool``) becomes the CIFAR
    stem (3x3 stride 1, no max-pool) for images under ``SMALL_IMAGE`` pixels."""
    conv, pool = getattr(net, "conv1", None), getattr(net, "maxpool", None)
    if (min(image_size) < SMALL_IMAGE and isinstance(conv, nn.Conv2d)
            and conv.stride != (1, 1) and isinstance(pool, nn.MaxPool2d)):
        net.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1,
                              bias=conv.bias is not None)
        net.maxpool = nn.Identity()


def _unknown_name(name: str, library: str, known: list[str]) -> ModelSpecError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelSpecError("name", f"name {name!r} is not a {library} model name{hint}")


def _with_size(factory: Any, size_arg: str, size: Any) -> nn.Module:
    """Models that fix their input size (ViTs) take it as an argument; the rest
    refuse the argument, and are built without it."""
    try:
        return factory(**{size_arg: size})
    except TypeError:
        return factory()


def build_torchvision(name: str, in_channels: int, num_classes: int,
                      image_size: tuple[int, int]) -> ZooModel:
    """torchvision's classification model ``name``, randomly initialised (never
    downloads weights), its stem adapted to the channels and small images."""
    tv = import_torchvision()
    known = tv.models.list_models(module=tv.models)
    if name not in known:
        raise _unknown_name(name, "torchvision", known)
    factory = partial(tv.models.get_model, name, weights=None, num_classes=num_classes)
    h, w = image_size
    # torchvision's ViTs take one side
    net = _with_size(factory, "image_size", h) if h == w else factory()
    _adapt_channels(net, in_channels)
    _adapt_small_stem(net, image_size)
    points = [p for p in ("layer1", "layer2", "layer3", "layer4") if hasattr(net, p)]
    return ZooModel(net, points if len(points) == 4 else [], "torchvision", name)


def build_timm(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int],
               dropout: float = 0.0) -> ZooModel:
    """timm's model ``name`` (``pretrained=False``: never downloads weights) for
    ``in_channels`` inputs, its stem adapted to small images."""
    timm = import_timm()
    if not timm.is_model(name):
        raise _unknown_name(name, "timm", timm.list_models())
    # not every timm model takes drop_rate: pass it only when asked for
    extra = {"drop_rate": dropout} if dropout else {}
    factory = partial(timm.create_model, name, pretrained=False, num_classes=num_classes,
                      in_chans=in_channels, **extra)
    net = _with_size(factory, "img_size", image_size)
    _adapt_small_stem(net, image_size)
    return ZooModel(net, _feature_modules(net), "timm", name)


def _feature_modules(net: nn.Module) -> list[str]:
    """The modules timm's ``feature_info`` names (its stages), or none where one of
    them is not a submodule (then only the input is a mixing point)."""
    names = set(dict(net.named_modules()))
    points = []
    for info in getattr(net, "feature_info", None) or []:
        module = info.get("module") if isinstance(info, dict) else None
        if not module or module not in names:
            return []
        points.append(module)
    return points


# --- by kind --------------------------------------------------------------------------------

def build_image_model(kind: str, in_channels: int, num_classes: int,
                      image_size: tuple[int, int], *, width: int | None = None,
                      depth: int | None = None, widen: int = 10, dropout: float = 0.0,
                      name: str | None = None, field: str = "kind") -> nn.Module:
    """The image classifier ``kind`` for (C, H, W) = (``in_channels``, *``image_size``)
    inputs; width/depth None take the kind's default (as ``ModelSpec``). ``field``
    is the spec field that chose ``kind``, for error messages."""
    if kind == "cnn":
        return SmallCNN(in_channels, num_classes, image_size, width or 32, depth or 3, dropout)
    if kind == "preact_resnet18":
        return PreActResNet18(in_channels, num_classes, width or 64, dropout)
    if kind == "wide_resnet":
        return WideResNet(in_channels, num_classes, depth or 28, widen, dropout)
    if kind in ("torchvision", "timm"):
        if not name:
            raise ModelSpecError("name", f"name is required for {field} {kind!r}")
        try:
            if kind == "torchvision":
                return build_torchvision(name, in_channels, num_classes, image_size)
            return build_timm(name, in_channels, num_classes, image_size, dropout)
        except MissingPackage as exc:
            raise ModelSpecError(field, f"{field} {kind!r} needs the {exc.package} package: "
                                        f"{exc}") from exc
    raise ModelSpecError(field, f"{field} must be one of {', '.join(IMAGE_KINDS)}, "
                                f"not {kind!r}")


def build_image_classifier(spec: ModelSpec, input_shape: tuple[int, ...],
                           num_classes: int) -> nn.Module:
    """The image classifier of ``spec`` (an image kind) for per-sample (C, H, W)."""
    if len(input_shape) != 3:
        raise ValueError(f"model kind {spec.kind!r} needs images (C, H, W), "
                         f"not shape {tuple(input_shape)}")
    c, h, w = input_shape
    return build_image_model(spec.kind, c, num_classes, (h, w), width=spec.width,
                             depth=spec.depth, widen=spec.widen, dropout=spec.dropout,
                             name=spec.name)


def image_mixing_layers(spec: ModelSpec, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """Largest manifold-mixup layer of the image network ``spec`` builds (the image
    classifier's, or the multimodal model's own 2), counted without memory: the
    torchvision/timm ones are built on the meta device to read it."""
    if spec.kind in MULTIMODAL_KINDS:  # the multimodal and latent models both mix at 0..2
        from app.ml.models.multimodal import MIXING_LAYERS
        return MIXING_LAYERS
    family = image_family(spec.kind, spec.image_encoder)
    if family == "cnn":
        return int(spec.depth)  # type: ignore[arg-type]
    if family == "preact_resnet18":
        return 4
    if family == "wide_resnet":
        return 3
    with torch.device("meta"):
        model = build_image_classifier(spec, input_shape, 2)
    return int(model.mixing_layers)
