"""Multimodal autoencoders (``multimodal_ae``) and VAEs (``multimodal_vae``).

The encoders are the multimodal classifier's (``build_encoder``); each
modality's features map to its own posterior over one shared latent of
``latent_dim``, which a decoder per modality reconstructs from and a linear
head classifies.

Missing modalities: the VAE fuses the posteriors of the modalities a sample
has as a **product of experts** with a unit-Gaussian prior expert (Wu &
Goodman, MVAE, 2018): precisions add, means are precision-weighted, so a
sample with one modality gets that expert sharpened by the prior, one with
none gets the prior itself, and no extra network is needed for any subset.
The AE (no variances) averages the codes of the modalities present.

Mixing (``forward(..., mixed)``): the reconstruction and KL terms see the
samples as they are; the classification head sees the mix. ``latent_mixup``
(``Mixed.latent``) interpolates the shared latent, one λ and partner per
sample; manifold mixup mixes at layer 0 (the inputs), 1 (the encoders'
features, before the posterior) or 2 (the latent, the same as latent mixup).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from app.ml.mixing import Mixed
from app.ml.mixing.ops import interpolate
from app.ml.models.encoders import TabularEncoder, TextEncoder
from app.ml.models.presence import ModalityInputs
from app.ml.models.spec import LATENT_KINDS, ModelSpec

MIXING_LAYERS = 2
LOGVAR_LIMIT = 10.0  # clamp on per-expert log-variances: exp() stays finite in fp16/bf16


def latent_method_problem(method: str, model_kind: str) -> str | None:
    """Why ``method`` cannot train a ``model_kind`` model; None when it can. The one
    rule the API (422 at ``augmentation.method``) and the worker share."""
    if method == "latent_mixup" and model_kind not in LATENT_KINDS:
        return (f"latent_mixup mixes a model's shared latent; model.kind {model_kind!r} has "
                f"none: use {' or '.join(LATENT_KINDS)}")
    if model_kind in LATENT_KINDS and method not in LATENT_METHODS:
        return (f"a {model_kind} model reconstructs its inputs, so it mixes inside the model: "
                f"use one of {', '.join(LATENT_METHODS)}, not {method}")
    return None


LATENT_METHODS = ("none", "latent_mixup", "manifold_mixup")


def recon_weight_problems(recon_weights: Mapping[str, float], modalities: list[str]
                          ) -> list[tuple[str, str]]:
    """(field, reason) for each ``recon_weights`` entry naming a modality the model
    does not read."""
    return [(f"recon_weights.{m}", f"the dataset has no modality {m!r}; it has "
                                   f"{', '.join(modalities)}")
            for m in recon_weights if m not in modalities]


def product_of_experts(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse diagonal Gaussian experts (N, M, D) where ``mask`` (N, M) is True, with
    a N(0, I) prior expert: precision T = 1 + Σ m_i/σ_i², mean = Σ m_i μ_i/σ_i² / T.
    Returns the fused (mean, log-variance), (N, D) each."""
    precision = torch.exp(-logvar.float()) * mask[..., None].float()
    total = 1.0 + precision.sum(dim=1)
    mean = (precision * mu.float()).sum(dim=1) / total
    return mean, -torch.log(total)


def masked_average(codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of codes (N, M, D) over the modalities present (mask (N, M)); zeros
    for a sample with none."""
    w = mask[..., None].to(codes.dtype)
    return (codes * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class ConvDecoder(nn.Module):
    """Latent → (C, H, W): a linear map to a (2·width, ⌈H/4⌉, ⌈W/4⌉) grid, two
    stride-2 transposed convolutions, cropped to (H, W)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.shape = shape
        c, h, w = shape
        self.grid = (2 * width, math.ceil(h / 4), math.ceil(w / 4))
        self.fc = nn.Linear(latent_dim, math.prod(self.grid))
        self.net = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(self.fc(z).view(-1, *self.grid))
        return x[:, :, :self.shape[1], :self.shape[2]]


class ShapedDecoder(nn.Module):
    """A ConvDecoder for per-sample shapes other than (C, H, W): a spectrogram
    (F, T) decodes as one channel; video (T, C, H, W) as T frames of its own
    latent each (a linear map from the shared latent)."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.shape = shape
        self.frames = shape[0] if len(shape) == 4 else 0
        frame = shape[-3:] if len(shape) >= 3 else (1, *shape)
        self.expand = nn.Linear(latent_dim, self.frames * latent_dim) if self.frames else None
        self.conv = ConvDecoder(latent_dim, tuple(frame), width)  # type: ignore[arg-type]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        if self.expand is not None:
            z = self.expand(z).view(n * self.frames, -1)
        return self.conv(z).reshape(n, *self.shape)


class MLPDecoder(nn.Module):
    """Latent → (F,) values (tabular columns, a waveform)."""

    def __init__(self, latent_dim: int, size: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TokenDecoder(nn.Module):
    """Latent → token logits (N, T, vocab): a width-``hidden`` vector per
    position, then one shared projection onto the vocabulary."""

    def __init__(self, latent_dim: int, length: int, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.length, self.hidden = length, hidden
        self.positions = nn.Linear(latent_dim, length * hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.positions(z)).view(-1, self.length, self.hidden)
        return self.out(h)


def build_decoder(spec: ModelSpec, kind: str, shape: tuple[int, ...],
                  vocab_size: int | None = None) -> nn.Module:
    """The decoder of one modality: conv for images, spectrograms and video
    frames; token logits for text; an MLP for tabular rows and waveforms."""
    width = int(spec.width or 32)
    if kind == "text":
        if vocab_size is None:
            raise ValueError("a text decoder needs the vocabulary size")
        return TokenDecoder(spec.latent_dim, shape[0], vocab_size, spec.text_dim)
    if kind in ("image", "video") or (kind == "audio" and len(shape) >= 2):
        return ShapedDecoder(spec.latent_dim, shape, width)
    return MLPDecoder(spec.latent_dim, math.prod(shape), max(spec.dim, 2 * spec.latent_dim))


@dataclass
class LatentOutput:
    """One training forward: the fused posterior (``logvar`` None for the AE), the
    latent decoded, the reconstructions by modality, the classifier's logits (of
    the mixed latent under mixing) and the presence (N, M) the encoders saw."""
    mu: torch.Tensor
    logvar: torch.Tensor | None
    z: torch.Tensor
    recon: dict[str, torch.Tensor]
    logits: torch.Tensor
    seen: torch.Tensor


class LatentModel(ModalityInputs, nn.Module):
    """Encoders, per-modality posteriors over one latent, decoders and a head.

    ``forward(inputs, mixed=None, present=None)`` returns the head's logits of the
    posterior mean (what prediction and the robustness figures call);
    ``forward(..., full=True)`` a ``LatentOutput`` for training (z sampled by
    the reparameterisation while training). ``encode(inputs, present)`` gives
    the fused posterior; ``decode(z)`` every modality's reconstruction.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], decoders: Mapping[str, nn.Module],
                 kinds: Mapping[str, str], dim: int, latent_dim: int, num_classes: int,
                 variational: bool, modality_dropout: float = 0.0) -> None:
        super().__init__()
        if list(encoders) != list(decoders):
            raise ValueError("encoders and decoders must list the same modalities in order")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.decoders = nn.ModuleDict(dict(decoders))
        self.kinds = dict(kinds)
        self.dim, self.latent_dim = dim, latent_dim
        self.variational = variational
        self.modality_dropout = modality_dropout
        out = 2 * latent_dim if variational else latent_dim
        self.posteriors = nn.ModuleDict({m: nn.Linear(dim, out) for m in encoders})
        self.classifier = nn.Linear(latent_dim, num_classes)

    @property
    def mixing_layers(self) -> int:
        return MIXING_LAYERS

    def _features(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor,
                  mixed: Mixed | None) -> dict[str, torch.Tensor]:
        """Each encoder's features, zero for absent samples (and modalities);
        ``mixed`` at layer 0 mixes the inputs (text and categorical columns at
        their embeddings, inside their encoders)."""
        feats = {}
        n = mask.shape[0]
        for i, (m, encoder) in enumerate(self.encoders.items()):
            if m not in inputs:
                feats[m] = torch.zeros(n, self.dim, device=mask.device)
                continue
            keep = mask[:, i]
            x = inputs[m] * keep.view(-1, *([1] * (inputs[m].dim() - 1))).to(inputs[m].dtype)
            if isinstance(encoder, TextEncoder | TabularEncoder):
                f = encoder(x, mixed)
            else:
                if mixed is not None and x.is_floating_point():
                    x = interpolate(x, x[mixed.index], mixed.lam)
                f = encoder(x)
            feats[m] = f
        return feats

    def _posterior(self, feats: Mapping[str, torch.Tensor], mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads = torch.stack([self.posteriors[m](feats[m].float()) for m in self.modalities],
                            dim=1)  # (N, M, out)
        if not self.variational:
            return masked_average(heads, mask), None
        mu, logvar = heads.chunk(2, dim=-1)
        return product_of_experts(mu, logvar.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT), mask)

    def encode(self, inputs: Mapping[str, torch.Tensor],
               present: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused posterior (mean, log-variance; None for the AE) of (normalised)
        inputs; a modality left out of ``inputs`` is absent for every sample."""
        n, device = self.batch_of(inputs)
        mask = self.presence(inputs, present, n, device)
        return self._posterior(self._features(inputs, mask, None), mask)

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m: decoder(z) for m, decoder in self.decoders.items()}

    def _sample(self, mu: torch.Tensor, logvar: torch.Tensor | None) -> torch.Tensor:
        if logvar is None or not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def _mixed_logits(self, inputs: Mapping[str, torch.Tensor], seen: torch.Tensor,
                      feats: Mapping[str, torch.Tensor], z: torch.Tensor,
                      mixed: Mixed | None) -> torch.Tensor:
        if mixed is None or (mixed.layer is None and not mixed.latent):
            return self.classifier(z)
        if mixed.latent or mixed.layer == 2:
            return self.classifier(interpolate(z, z[mixed.index], mixed.lam))
        # a mixed sample has a modality when either partner has it (lam < 1)
        union = seen | (seen[mixed.index] & (mixed.lam < 1.0)[:, None])
        if mixed.layer == 1:
            mixed_feats = {m: interpolate(f, f[mixed.index], mixed.lam) for m, f in feats.items()}
        elif mixed.layer == 0:
            mixed_feats = self._features(inputs, seen, mixed)
        else:
            raise ValueError(f"manifold layer {mixed.layer} outside 0..{MIXING_LAYERS}")
        mu, logvar = self._posterior(mixed_feats, union)
        return self.classifier(self._sample(mu, logvar))

    def forward(self, inputs: Mapping[str, torch.Tensor], mixed: Mixed | None = None,
                present: Mapping[str, torch.Tensor] | None = None, *, full: bool = False
                ) -> torch.Tensor | LatentOutput:
        n, device = self.batch_of(inputs)
        mask = self.presence(inputs, present, n, device)
        # dropped modalities train posteriors of subsets, which decoding one
        # modality from another needs
        seen = (self.drop_modalities(mask) if self.training and self.modality_dropout > 0
                else mask)
        feats = self._features(inputs, seen, None)
        mu, logvar = self._posterior(feats, seen)
        if not full:
            return self._mixed_logits(inputs, seen, feats, mu, mixed)
        z = self._sample(mu, logvar)
        logits = self._mixed_logits(inputs, seen, feats, z, mixed)
        return LatentOutput(mu, logvar, z, self.decode(z), logits, seen)


def build_latent_model(spec: ModelSpec, input_shape: Mapping[str, tuple[int, ...]],
                       num_classes: int, kinds: Mapping[str, str],
                       vocab_sizes: Mapping[str, int] | None = None,
                       categorical: Mapping[str, Mapping[int, int]] | None = None
                       ) -> LatentModel:
    """The ``multimodal_ae`` / ``multimodal_vae`` model of ``spec`` for modalities
    of these per-sample shapes and kinds."""
    # imported here: multimodal's build_model dispatches to this function
    from app.ml.models.multimodal import build_encoder

    encoders = {m: build_encoder(spec, m, kinds[m], tuple(shape),
                                 (vocab_sizes or {}).get(m), (categorical or {}).get(m))
                for m, shape in input_shape.items()}
    decoders = {m: build_decoder(spec, kinds[m], tuple(shape), (vocab_sizes or {}).get(m))
                for m, shape in input_shape.items()}
    return LatentModel(encoders, decoders, kinds, spec.dim, spec.latent_dim, num_classes,
                       spec.kind == "multimodal_vae", spec.modality_dropout)
