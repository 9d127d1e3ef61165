"""A multimodal classifier (one encoder per modality + a fusion head) and
``build_model``, which builds it or an image classifier (any image kind) from a spec."""

from collections.abc import Mapping

import torch
from torch import nn

from app.ml.mixing import Mixed
from app.ml.mixing.ops import interpolate
from app.ml.models.encoders import (
    AudioEncoder,
    ImageEncoder,
    TabularEncoder,
    TextEncoder,
    VideoEncoder,
)
from app.ml.models.fusion import Fusion, build_fusion
from app.ml.models.image_models import build_image_classifier
from app.ml.models.latent import build_latent_model
from app.ml.models.presence import ModalityInputs
from app.ml.models.spec import IMAGE_KINDS, LATENT_KINDS, ModelSpec, ModelSpecError

MIXING_LAYERS = 2


def _union(present: torch.Tensor, mixed: Mixed,
           columns: list[bool] | None = None) -> torch.Tensor:
    """Presence after mixing: a mixed sample has what either partner has (of the
    modalities ``columns`` marks, when given: those that were mixed)."""
    if columns is not None and not any(columns):
        return present
    gained = present[mixed.index] & (mixed.lam < 1.0)[:, None]
    for i, was_mixed in enumerate(columns or ()):
        if not was_mixed:  # plain column writes: no index tensor to copy to the device
            gained[:, i] = False
    return present | gained


def _zero_absent(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with absent samples' values set to 0 (padding, for token ids)."""
    return x * keep.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class MultimodalModel(ModalityInputs, nn.Module):
    """Encoders by modality name, then a fusion head.

    ``forward(inputs, mixed=None, present=None)``: ``inputs`` maps modality to
    its batch (a modality left out counts as absent); ``present`` maps modality
    to an (N,) bool mask (default: all present). Absent modalities have their
    features zeroed and are masked in the fusion. While training,
    ``modality_dropout`` drops each present modality of a sample with that
    probability, never all of them.

    Manifold mixup layers (``mixed.layer``): 0 = the inputs (float inputs
    interpolated, text and categorical tabular columns mixed at their
    embeddings), 1 = the encoders' features, 2 = the fused representation
    before the classifier. Text listed in ``mixed.deferred`` is mixed by its
    encoder (embedding mixup), and so are the categorical columns of a tabular
    modality that ``mix`` mixed.

    Missing modalities under mixing: a mixed sample has a modality when either
    partner has it (and the partner's weight is > 0). At manifold layers the
    absent side enters as zeros (inputs zeroed, features zeroed); for inputs
    mixed by ``mix`` the caller must have zeroed absent samples' (normalised)
    values before mixing, as ``app.ml.training`` does, so that what a missing
    modality stores never reaches a partner.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], kinds: Mapping[str, str],
                 fusion: Fusion, dim: int, modality_dropout: float = 0.0) -> None:
        super().__init__()
        if list(encoders) != fusion.modalities:
            raise ValueError("encoders and fusion must list the same modalities in order")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError("modality_dropout must be in [0, 1)")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.kinds = dict(kinds)
        self.fusion = fusion
        self.dim = dim
        self.modality_dropout = modality_dropout

    @property
    def mixing_layers(self) -> int:
        return MIXING_LAYERS

    def mixed_columns(self, mixed: Mixed) -> list[bool]:
        """Per modality: did ``mix`` mix it at the input?"""
        done = set(mixed.ops) | set(mixed.deferred)
        return [m in done for m in self.modalities]

    def encode(self, inputs: Mapping[str, torch.Tensor], mixed: Mixed | None,
               n: int, device: torch.device) -> dict[str, torch.Tensor]:
        layer = mixed.layer if mixed is not None else None
        feats = {}
        dtype = None
        for m, encoder in self.encoders.items():
            if m not in inputs:
                continue
            x = inputs[m]
            if isinstance(encoder, TextEncoder | TabularEncoder):
                feats[m] = encoder(x, mixed)
            else:
                if layer == 0 and x.is_floating_point():
                    x = interpolate(x, x[mixed.index], mixed.lam)  # type: ignore[union-attr]
                feats[m] = encoder(x)
            dtype = feats[m].dtype
        for m in self.modalities:
            if m not in feats:
                feats[m] = torch.zeros(n, self.dim, device=device, dtype=dtype or torch.float32)
        return feats

    def forward(self, inputs: Mapping[str, torch.Tensor], mixed: Mixed | None = None,
                present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        layer = mixed.layer if mixed is not None else None
        if layer is not None and not 0 <= layer <= self.mixing_layers:
            raise ValueError(f"manifold layer {layer} outside 0..{self.mixing_layers}")
        n, device = self.batch_of(inputs)
        mask = self.presence(inputs, present, n, device)
        if mixed is not None and layer is None:
            mask = _union(mask, mixed, self.mixed_columns(mixed))
        if self.training and self.modality_dropout > 0:
            mask = self.drop_modalities(mask)
        if layer == 0:
            inputs = {m: _zero_absent(x, mask[:, self.modalities.index(m)])
                      if m in self.encoders else x for m, x in inputs.items()}
            mask = _union(mask, mixed)  # type: ignore[arg-type]
        feats = self.encode(inputs, mixed, n, device)
        feats = {m: feats[m] * mask[:, i:i + 1].to(feats[m].dtype)
                 for i, m in enumerate(self.modalities)}
        if layer == 1:
            feats = {m: interpolate(f, f[mixed.index], mixed.lam)  # type: ignore[union-attr]
                     for m, f in feats.items()}
            mask = _union(mask, mixed)  # type: ignore[arg-type]
        h = self.fusion.represent(feats, mask)
        if layer == 2:
            h = interpolate(h, h[mixed.index], mixed.lam)  # type: ignore[union-attr]
            mask = _union(mask, mixed)  # type: ignore[arg-type]
        return self.fusion.classify(h, mask)


def _kind(name: str, kinds: Mapping[str, str] | None) -> str:
    if kinds is not None and name in kinds:
        return kinds[name]
    for k in ("image", "video", "audio", "text", "tabular"):
        if name == k or name.startswith(f"{k}_"):
            return k
    raise ValueError(f"cannot tell the kind of modality {name!r}; pass kinds")


def build_encoder(spec: ModelSpec, name: str, kind: str, shape: tuple[int, ...],
                  vocab_size: int | None = None,
                  categorical: Mapping[int, int] | None = None) -> nn.Module:
    """The encoder of modality ``name``; ``categorical`` (tabular) maps column
    index to its number of codes."""
    if kind in ("image", "video"):
        c, h, w = shape[-3:]
        tower = ImageEncoder(c, spec.dim, (h, w), spec.image_encoder, spec.width, spec.depth,
                             spec.name, spec.widen, spec.dropout)
        return tower if kind == "image" else VideoEncoder(tower, spec.dim, spec.video_encoder)
    if kind == "text":
        if vocab_size is None:
            raise ValueError(f"text modality {name!r} needs a vocabulary size")
        return TextEncoder(vocab_size, spec.dim, shape[0], spec.text_encoder, spec.text_dim,
                           spec.heads, spec.layers, spec.dropout, name=name)
    if kind == "audio":
        # depth is the WRN's depth when the image tower is one: the spectrogram CNN
        # keeps its default then
        depth = 3 if spec.image_encoder == "wide_resnet" else int(spec.depth or 3)
        return AudioEncoder(shape, spec.dim, int(spec.width or 32), depth)
    if kind == "tabular":
        columns = dict(categorical or {})
        return TabularEncoder(shape[0], spec.dim, categorical=list(columns),
                              cardinalities=list(columns.values()), dropout=spec.dropout,
                              name=name)
    raise ValueError(f"unknown modality kind {kind!r} for {name!r}")


def build_model(spec: ModelSpec,
                input_shape: tuple[int, ...] | Mapping[str, tuple[int, ...]],
                num_classes: int, *, kinds: Mapping[str, str] | None = None,
                vocab_sizes: Mapping[str, int] | None = None,
                categorical: Mapping[str, Mapping[int, int]] | None = None,
                multilabel: bool = False) -> nn.Module:
    """The model ``spec`` describes.

    An image kind (``cnn``, ``preact_resnet18``, ``wide_resnet``, ``torchvision``,
    ``timm``): ``input_shape`` is the image's per-sample (C, H, W) (or a mapping of
    modality to shape, from which the image modality is taken).
    ``multimodal``: ``input_shape`` maps modality name to its per-sample shape;
    ``kinds`` maps it to its kind (default: from the name); text modalities
    need ``vocab_sizes`` (largest id + 1); ``categorical`` maps a tabular
    modality to {column: number of codes} for the columns holding category
    codes; ``multilabel`` asks for independent per-class logits.
    """
    if spec.kind in IMAGE_KINDS:
        if isinstance(input_shape, Mapping):
            images = [m for m in input_shape if _kind(m, kinds) == "image"]
            if not images:
                raise ModelSpecError("kind", f"the {spec.kind} model needs an image modality")
            input_shape = input_shape[images[0]]
        return build_image_classifier(spec, tuple(input_shape), num_classes)
    if spec.kind in LATENT_KINDS and isinstance(input_shape, Mapping) and input_shape:
        return build_latent_model(spec, input_shape, num_classes,
                                  {m: _kind(m, kinds) for m in input_shape}, vocab_sizes,
                                  categorical)
    if spec.kind != "multimodal":
        raise ModelSpecError("kind", f"unknown model kind {spec.kind!r}")
    if not isinstance(input_shape, Mapping) or not input_shape:
        raise ValueError("a multimodal model needs a mapping of modality to input shape")
    encoders = {m: build_encoder(spec, m, _kind(m, kinds), tuple(shape),
                                 (vocab_sizes or {}).get(m), (categorical or {}).get(m))
                for m, shape in input_shape.items()}
    fusion = build_fusion(spec.fusion, list(encoders), spec.dim, num_classes,
                          heads=spec.heads, layers=spec.layers, rank=spec.rank,
                          dropout=spec.dropout, multilabel=multilabel)
    return MultimodalModel(encoders, {m: _kind(m, kinds) for m in encoders}, fusion, spec.dim,
                           spec.modality_dropout)
