"""The terms of an autoencoder's loss, per sample, each as its formula.

- reconstruction of a float modality: the negative log-likelihood of a unit-variance
  Gaussian around the reconstruction, constants dropped: ½ Σ (x − x̂)² over the
  sample's values (normalised inputs, so every modality is in train-std units);
  category-code columns of a tabular modality are left out (they are codes, not
  numbers);
- reconstruction of text: the categorical NLL, Σ over non-padding positions of the
  cross-entropy of the token logits;
- KL of diagonal Gaussians, ½ Σ (log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1);
  against the unit-Gaussian prior, ½ Σ (σ² + μ² − 1 − log σ²).

Sums over a sample's values, so the ELBO −(Σ_m recon_m + KL) is the evidence lower
bound of these likelihoods (up to their constants).
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from app.ml.mixing.text import PAD_ID


def kl_diag(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
            logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) of diagonal Gaussians (N, D) → (N,)."""
    return 0.5 * (logvar_p - logvar_q
                  + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0).sum(dim=-1)


def kl_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample, (N, D) → (N,)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=-1)


def reconstruction_error(kind: str, recon: torch.Tensor, target: torch.Tensor,
                         skip_columns: Sequence[int] = ()) -> torch.Tensor:
    """Per-sample NLL (N,) of ``target`` under the decoder's output ``recon``:
    token logits (N, T, V) against ids (N, T) for text, a unit Gaussian otherwise."""
    if kind == "text":
        ids = target.long()
        nll = F.cross_entropy(recon.float().transpose(1, 2), ids, reduction="none")
        return (nll * (ids != PAD_ID).float()).sum(dim=1)
    diff = (recon.float() - target.float().reshape(recon.shape)).pow(2)
    if skip_columns:
        keep = torch.ones(diff.shape[1], device=diff.device)
        keep[list(skip_columns)] = 0.0
        diff = diff * keep
    return 0.5 * diff.reshape(diff.shape[0], -1).sum(dim=1)


def reconstruction_errors(kinds: Mapping[str, str], recon: Mapping[str, torch.Tensor],
                          targets: Mapping[str, torch.Tensor],
                          codes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """``reconstruction_error`` of every modality in ``targets``, (N,) each."""
    return {m: reconstruction_error(kinds[m], recon[m], x, codes.get(m, ()))
            for m, x in targets.items()}


def present_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of (N,) over the samples where ``present`` is True; 0 if none is."""
    w = present.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)
