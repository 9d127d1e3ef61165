"""Geodesic (spherical) interpolation of embeddings on the unit hypersphere.

m³-mix (Oh, So et al., "Geodesic Multi-Modal Mixup for Robust Fine-Tuning",
NeurIPS 2023) mixes L2-normalised image and text embeddings along the great
circle between them, so the mix stays on the sphere the contrastive loss lives on.
"""

import torch
import torch.nn.functional as F

# Where |cos θ| is above this (θ below ~0.014 rad, or within that of π), sin θ is
# too close to 0 for the slerp weights: normalised lerp is used instead. For
# near-parallel vectors the two agree to O(θ³), about 1e-7 here.
NEAR_PARALLEL_COS = 1.0 - 1e-4
_MIN_NORM = 1e-6


def slerp(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """The point a fraction ``lam`` along the great circle from ``a`` (λ = 0) to
    ``b`` (λ = 1): ``sin((1-λ)θ)/sin θ · a + sin(λθ)/sin θ · b``, θ the angle
    between them.

    ``a`` and ``b`` are (..., D) and are projected onto the unit sphere first;
    ``lam`` is a number, a 0-d tensor or one weight per vector (shape ``a.shape[:-1]``).
    The result is unit-norm, computed in float32 (float64 stays float64).

    sin θ → 0 is guarded: where |cos θ| > ``NEAR_PARALLEL_COS`` the normalised
    lerp is returned. For near-antipodal vectors the great circle itself is not
    defined, so the result there switches from ``a`` to ``b`` at λ = ½ (exact
    antipodes at λ = ½ give ``a``). Both branches are built so that neither
    values nor gradients can be inf or NaN (the unused branch of a ``where`` is
    evaluated at safe inputs, since its gradient would otherwise poison the sum).
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs a and b of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, torch.float32)
    a = F.normalize(a.to(dtype), dim=-1)
    b = F.normalize(b.to(dtype), dim=-1)
    w = torch.as_tensor(lam, dtype=dtype, device=a.device)
    if w.dim() > 0:
        if w.shape != a.shape[:-1]:
            raise ValueError(f"lam must be a scalar or of shape {tuple(a.shape[:-1])}, "
                             f"got {tuple(w.shape)}")
        w = w.unsqueeze(-1)

    cos = (a * b).sum(dim=-1, keepdim=True)
    near = cos.abs() > NEAR_PARALLEL_COS
    # near rows take θ = π/2 (sin θ = 1) in the slerp branch they do not use
    theta = torch.acos(torch.where(near, torch.zeros_like(cos), cos))
    geodesic = (torch.sin((1.0 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)

    lerp = (1.0 - w) * a + w * b
    # clamp before the square root: a zero vector gets a zero gradient, not 0/0
    norm = (lerp * lerp).sum(dim=-1, keepdim=True).clamp_min(_MIN_NORM**2).sqrt()
    nlerp = torch.where(norm > _MIN_NORM, lerp / norm, torch.where(w <= 0.5, a, b))
    return torch.where(near, nlerp, geodesic)
