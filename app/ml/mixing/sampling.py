"""Random draws for mixing, all on the batch's device from an explicit generator.

``torch.distributions.Beta`` cannot take a generator, so Beta(α, α) is drawn as a
ratio of two Gamma variates with Marsaglia & Tsang's method (2000), vectorised:
a fixed number of proposals per draw, the first accepted one kept. No host sync.
"""

import torch

# Acceptance is > 95 % per proposal for shape >= 1, so the chance that all of
# them are rejected is below 1e-20; the last proposal is then used as is.
_PROPOSALS = 16
_LAM_MIN = torch.finfo(torch.float32).tiny
_LAM_MAX = 1.0 - 2.0**-24


def _log_gamma_variates(shape: float, n: int, generator: torch.Generator,
                        device: torch.device) -> torch.Tensor:
    """log of n Gamma(shape, 1) variates, float32, on ``device``."""
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    x = torch.randn((n, _PROPOSALS), generator=generator, device=device)
    u = torch.rand((n, _PROPOSALS), generator=generator, device=device)
    v = (1.0 + c * x) ** 3
    v_safe = v.clamp_min(1e-12)
    accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v_safe + d * torch.log(v_safe))
    # index of the first accepted proposal (or the last one if none was)
    first = torch.where(accept.any(dim=1), accept.to(torch.int8).argmax(dim=1),
                        torch.full((n,), _PROPOSALS - 1, device=device))
    log_g = torch.log(d * v_safe.gather(1, first[:, None]).squeeze(1))
    if boost:
        # Gamma(a) = Gamma(a + 1) * U^(1/a); kept in log space so tiny α cannot underflow
        u_boost = torch.rand((n,), generator=generator, device=device).clamp_min(1e-38)
        log_g = log_g + torch.log(u_boost) / shape
    return log_g


def sample_beta(alpha: float, n: int, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) as a float32 tensor on ``device``."""
    log_x = _log_gamma_variates(alpha, n, generator, device)
    log_y = _log_gamma_variates(alpha, n, generator, device)
    # float32 sigmoid rounds to exactly 0 or 1 for small α; keep λ strictly inside
    # (0, 1) so "λ = 1" keeps meaning "not mixed".
    return torch.sigmoid(log_x - log_y).clamp(_LAM_MIN, _LAM_MAX)


def sample_partners(n: int, generator: torch.Generator, device: torch.device,
                    pairing: str = "permute", involution: bool = False) -> torch.Tensor:
    """Partner index per sample: sample i is mixed with ``index[i]``.

    ``involution`` asks for pairs (index[index[i]] == i): a random perfect
    matching for ``permute`` (the odd one out is its own partner), the mirror for
    ``flip``.
    """
    if pairing == "flip":
        return torch.arange(n - 1, -1, -1, device=device)
    if pairing == "roll":
        return torch.roll(torch.arange(n, device=device), -1)
    order = torch.randperm(n, generator=generator, device=device)
    if not involution:
        return order
    index = torch.arange(n, device=device)
    even = order[0:n - n % 2:2]
    odd = order[1:n - n % 2:2]
    index[even] = odd
    index[odd] = even
    return index
