"""Temperature scaling (Guo et al., 2017): one scalar T > 0 that divides the
logits, fitted on held-out logits by minimising their NLL.

The NLL of ``logits / T`` is convex in 1/T (a log-sum-exp, or a softplus, of
functions linear in 1/T minus a linear term), so it is unimodal in log T and a
golden-section search over a fixed bracket finds its minimum: deterministic,
no learning rate, no random start. The bracket reaches well below 1 because
mixup can leave small networks under-confident, which only T < 1 corrects.

A fit that ends at an end of the bracket (``at_bound``) is not a calibration:
the NLL was still falling there, so T is the bracket's, and figures computed
with it (a "calibrated" NLL of 1e-30 on a split the model gets all right)
describe the bound, not the model. Callers report the flag and leave them out.
"""

import math
from collections.abc import Callable

import torch

# T in [1/100, 100]: wide enough for a strongly under-confident model (logit
# margins of a few tenths want T of a few hundredths); an optimum outside it is a
# degenerate split, not a calibration: a validation split the model gets all
# right (with a margin) has its NLL falling for ever as T → 0, one it gets all
# wrong as T → ∞. ``at_bound`` says when the fit stopped at an end.
LOG_T_RANGE = (-math.log(100.0), math.log(100.0))
_AT_BOUND = 1e-4  # in log T: where the NLL flattens (T → ∞) float32 stops short of the end
_STEPS = 60  # bracket shrinks by 0.618^60 ≈ 3e-13: far below float32 resolution
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0

Nll = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, nll: Nll,
                    log_t_range: tuple[float, float] = LOG_T_RANGE) -> float:
    """The T minimising ``nll(logits / T, labels)``, searched over log T in
    ``log_t_range``; an empty split gives 1.0. ``nll`` is the task's mean NLL."""
    if logits.shape[0] == 0:
        return 1.0
    logits = logits.double()

    def loss(log_t: float) -> float:
        return float(nll(logits / math.exp(log_t), labels))

    lo, hi = log_t_range
    a, b = hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(_STEPS):
        if fa <= fb:  # the minimum is in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _INV_PHI * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _INV_PHI * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2.0)


def at_bound(temperature: float, log_t_range: tuple[float, float] = LOG_T_RANGE) -> bool:
    """Whether a fitted ``temperature`` is an end of ``log_t_range`` (the NLL was
    still falling there): T is then the bound's, not the data's."""
    log_t = math.log(temperature)
    return min(abs(log_t - log_t_range[0]), abs(log_t - log_t_range[1])) < _AT_BOUND
