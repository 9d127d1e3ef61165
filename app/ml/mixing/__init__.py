"""Batched mixing ops with an explicit generator, and their registry."""

from app.ml.mixing.registry import METHODS, draw_lam, mix, register_method, soft_targets
from app.ml.mixing.sampling import sample_beta, sample_partners
from app.ml.mixing.types import Mixed, MixSpec

__all__ = [
    "METHODS",
    "MixSpec",
    "Mixed",
    "draw_lam",
    "mix",
    "register_method",
    "sample_beta",
    "sample_partners",
    "soft_targets",
]
