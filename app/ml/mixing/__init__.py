"""Batched mixing ops with an explicit generator, their registries, and ``mix``."""

from app.ml.mixing.registry import (
    DEFAULT_OPS,
    METHODS,
    MODALITY_OPS,
    draw_lam,
    infer_kinds,
    mix,
    register_method,
    register_op,
    smooth_targets,
    soft_targets,
)
from app.ml.mixing.sampling import sample_beta, sample_partners
from app.ml.mixing.text import embedding_mixup
from app.ml.mixing.types import KINDS, Mixed, MixSpec

__all__ = [
    "DEFAULT_OPS",
    "KINDS",
    "METHODS",
    "MODALITY_OPS",
    "MixSpec",
    "Mixed",
    "draw_lam",
    "embedding_mixup",
    "infer_kinds",
    "mix",
    "register_method",
    "register_op",
    "sample_beta",
    "sample_partners",
    "smooth_targets",
    "soft_targets",
]
