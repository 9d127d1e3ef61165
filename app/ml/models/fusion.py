"""Fusion heads: per-modality features (N, dim) and a presence mask → logits (N, K).

Every head splits into ``represent(features, present)`` — the fused
representation that manifold mixup's last layer mixes — and
``classify(h, present)`` → logits. ``forward`` is the two in a row.
``present`` is (N, M) bool in the head's modality order; an absent modality's
features never reach a sample's logits (callers zero them too). A sample with
no modality present is treated as if all were present (its features are zeros).
"""

import torch
import torch.nn.functional as F
from torch import nn


def _effective(present: torch.Tensor) -> torch.Tensor:
    """``present`` with all-absent rows switched to all-present."""
    return present | ~present.any(dim=1, keepdim=True)


class Fusion(nn.Module):
    def __init__(self, modalities: list[str]) -> None:
        super().__init__()
        self.modalities = list(modalities)

    def stack(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([features[m] for m in self.modalities], dim=1)  # (N, M, dim)

    def represent(self, features: dict[str, torch.Tensor],
                  present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return self.classify(self.represent(features, present), present)


class EarlyFusion(Fusion):
    """Concatenate the features (absent ones zeroed) → MLP → linear."""

    def __init__(self, modalities: list[str], dim: int, num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__(modalities)
        m = len(modalities)
        self.mlp = nn.Sequential(nn.Linear(m * dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(dim, num_classes)

    def represent(self, features, present):
        x = self.stack(features) * present.unsqueeze(-1).to(features[self.modalities[0]].dtype)
        return self.mlp(x.flatten(1))

    def classify(self, h, present):
        return self.head(h)


class LateFusion(Fusion):
    """A classifier per modality; the output is a learnable softmax-weighted
    average of the per-modality log-probabilities over the present modalities.
    The representation is the per-modality hidden layer, (N, M, dim).

    ``multilabel``: each class is its own yes/no question, so the heads' logits
    (log-odds) are averaged instead — the normalised geometric pooling of the
    per-modality Bernoulli distributions, as averaging log-probabilities is for
    one categorical distribution."""

    def __init__(self, modalities: list[str], dim: int, num_classes: int,
                 dropout: float = 0.0, multilabel: bool = False) -> None:
        super().__init__(modalities)
        self.multilabel = multilabel
        self.hidden = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.ReLU(),
                                                  nn.Dropout(dropout)) for _ in modalities)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in modalities)
        self.weight_logits = nn.Parameter(torch.zeros(len(modalities)))

    def represent(self, features, present):
        pairs = zip(self.modalities, self.hidden, strict=True)
        return torch.stack([net(features[m]) for m, net in pairs], dim=1)

    def weights(self, present: torch.Tensor) -> torch.Tensor:
        """(N, M) mixture weights: softmax over the present modalities."""
        scores = self.weight_logits.expand(present.shape[0], -1)
        scores = scores.masked_fill(~_effective(present), float("-inf"))
        return scores.softmax(dim=1)

    def classify(self, h, present):
        def score(z: torch.Tensor) -> torch.Tensor:
            return z if self.multilabel else F.log_softmax(z, dim=-1)

        logp = torch.stack([score(head(h[:, i]))
                            for i, head in enumerate(self.heads)], dim=1)  # (N, M, K)
        w = self.weights(present).to(logp.dtype)
        return (w.unsqueeze(-1) * logp).sum(dim=1)


class AttentionFusion(Fusion):
    """One token per modality (features + a learned modality embedding), a small
    TransformerEncoder with absent modalities masked out, masked mean pooling."""

    def __init__(self, modalities: list[str], dim: int, num_classes: int, heads: int = 4,
                 layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(modalities)
        self.modality_embed = nn.Parameter(torch.zeros(1, len(modalities), dim))
        nn.init.normal_(self.modality_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def represent(self, features, present):
        keep = _effective(present)
        tokens = self.stack(features) + self.modality_embed
        h = self.encoder(tokens, src_key_padding_mask=~keep)
        w = keep.unsqueeze(-1).to(h.dtype)
        return self.norm((h * w).sum(dim=1) / w.sum(dim=1))

    def classify(self, h, present):
        return self.head(h)


class TensorFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al., ACL 2018): each feature gets a 1
    appended, rank-R modality factors project it to (R, dim), the projections are
    multiplied elementwise across modalities and summed over the rank. An absent
    modality contributes its factor applied to (0…0, 1), independent of its input."""

    def __init__(self, modalities: list[str], dim: int, num_classes: int, rank: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__(modalities)
        self.factors = nn.ParameterList()
        for _ in modalities:
            factor = torch.empty(rank, dim + 1, dim)
            nn.init.xavier_normal_(factor)
            with torch.no_grad():  # start near 1 so the product over modalities is tame
                factor[:, -1] += 1.0
            self.factors.append(nn.Parameter(factor))
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.post = nn.Sequential(nn.LayerNorm(dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(dim, num_classes)

    def represent(self, features, present):
        fused = None
        for i, (m, factor) in enumerate(zip(self.modalities, self.factors, strict=True)):
            f = features[m] * present[:, i:i + 1].to(features[m].dtype)
            f1 = torch.cat([f, torch.ones_like(f[:, :1])], dim=1)
            z = torch.einsum("nd,rdo->nro", f1, factor.to(f1.dtype))
            fused = z if fused is None else fused * z
        h = torch.einsum("nro,r->no", fused, self.rank_weights.to(fused.dtype)) + self.bias
        return self.post(h)

    def classify(self, h, present):
        return self.head(h)


class GatedFusion(Fusion):
    """Gated multimodal unit (Arevalo et al., 2017) for M modalities: h_m =
    tanh(W_m x_m); gates z = softmax over the present modalities of a linear map
    of all (masked) features; h = Σ z_m h_m."""

    def __init__(self, modalities: list[str], dim: int, num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__(modalities)
        m = len(modalities)
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in modalities)
        self.gate = nn.Linear(m * dim, m)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def represent(self, features, present):
        keep = _effective(present)
        x = self.stack(features) * present.unsqueeze(-1).to(features[self.modalities[0]].dtype)
        h = torch.stack([torch.tanh(p(x[:, i])) for i, p in enumerate(self.proj)], dim=1)
        z = self.gate(x.flatten(1)).masked_fill(~keep, float("-inf")).softmax(dim=1)
        return self.drop((z.unsqueeze(-1).to(h.dtype) * h).sum(dim=1))

    def classify(self, h, present):
        return self.head(h)


def build_fusion(kind: str, modalities: list[str], dim: int, num_classes: int, *,
                 heads: int = 4, layers: int = 1, rank: int = 4,
                 dropout: float = 0.0, multilabel: bool = False) -> Fusion:
    """The fusion head ``kind``; ``multilabel`` heads output independent
    per-class logits (only ``late`` fusion, which pools probabilities, differs)."""
    if kind == "early":
        return EarlyFusion(modalities, dim, num_classes, dropout)
    if kind == "late":
        return LateFusion(modalities, dim, num_classes, dropout, multilabel)
    if kind == "attention":
        return AttentionFusion(modalities, dim, num_classes, heads, layers, dropout)
    if kind == "tensor":
        return TensorFusion(modalities, dim, num_classes, rank, dropout)
    if kind == "gated":
        return GatedFusion(modalities, dim, num_classes, dropout)
    raise ValueError(f"unknown fusion {kind!r}")
