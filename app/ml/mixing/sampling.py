"""Random draws for mixing, all on the batch's device from an explicit generator.

``torch.distributions.Beta`` cannot take a generator, so Beta(α, α) is drawn as
a ratio of two Gamma variates, X / (X + Y) = sigmoid(log X − log Y), with the
Gamma draws from ``torch._standard_gamma``, the kernel behind
``torch.distributions.Gamma``, which does take one. α = 1 (Beta(1, 1) is the
uniform law) is one ``rand``. Each draw is a handful of kernels, so drawing λ
costs next to nothing beside the mixing itself, and never syncs with the host.
"""

import torch

_LAM_MIN = torch.finfo(torch.float32).tiny
_LAM_MAX = 1.0 - 2.0**-24


def _log_gamma_pair(shape: float, n: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """log of (2, n) independent Gamma(shape, 1) variates, float32, on ``device``."""
    boost = shape < 1.0
    concentration = torch.full((2, n), shape + 1.0 if boost else shape, device=device)
    log_g = torch._standard_gamma(concentration, generator=generator).clamp_min(_LAM_MIN).log()
    if boost:
        # Gamma(a) = Gamma(a + 1) * U^(1/a), in log space: for small α, Gamma(α)
        # variates underflow float32 (and float64) long before their ratio does
        u = torch.rand((2, n), generator=generator, device=device).clamp_min(1e-38)
        log_g = log_g + u.log() / shape
    return log_g


def sample_beta(alpha: float, n: int, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) as a float32 tensor on ``device``, strictly
    inside (0, 1) so that "λ = 1" keeps meaning "not mixed"."""
    if alpha == 1.0:
        lam = torch.rand(n, generator=generator, device=device)
    else:
        log_x, log_y = _log_gamma_pair(alpha, n, generator, device)
        lam = torch.sigmoid(log_x - log_y)
    return lam.clamp(_LAM_MIN, _LAM_MAX)


def sample_partners(n: int, generator: torch.Generator, device: torch.device,
                    pairing: str = "permute", involution: bool = False) -> torch.Tensor:
    """Partner index per sample: sample i is mixed with ``index[i]``.

    ``permute``: a random cyclic order of the batch, each sample mixed with the
    next one in it, so for n ≥ 2 no sample is its own partner (a random
    derangement; a plain random permutation leaves one fixed point a batch on
    average, a sample "mixed" with itself). ``involution`` asks for pairs
    (index[index[i]] == i): a random perfect matching for ``permute`` (the odd
    one out of an odd batch is its own partner), the mirror for ``flip``.
    """
    if pairing == "flip":
        return torch.arange(n - 1, -1, -1, device=device)
    if pairing == "roll":
        return torch.roll(torch.arange(n, device=device), -1)
    order = torch.randperm(n, generator=generator, device=device)
    index = torch.arange(n, device=device)
    if not involution:
        index[order] = torch.roll(order, -1)
        return index
    even = order[0:n - n % 2:2]
    odd = order[1:n - n % 2:2]
    index[even] = odd
    index[odd] = even
    return index
