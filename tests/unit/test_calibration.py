"""Temperature scaling: the fit, and what the tasks feed it."""

import math

import pytest
import torch
import torch.nn.functional as F

from app.ml.calibration import LOG_T_RANGE, fit_temperature
from app.ml.metrics import multilabel_nll


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def _sampled(true_t: float, n: int = 20_000, k: int = 6, seed: int = 0):
    """Logits z and labels drawn from softmax(z / true_t): perfectly calibrated at T = true_t."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, k, generator=g)
    labels = torch.multinomial((logits / true_t).softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_recovers_the_temperature_that_generated_the_labels(true_t):
    # T < 1 (an under-confident model, as mixup can leave one) is found as well as T > 1
    logits, labels = _sampled(true_t)
    fitted = fit_temperature(logits, labels, _ce)
    assert fitted == pytest.approx(true_t, rel=0.06)


def test_the_fit_minimises_the_nll_and_is_deterministic():
    logits, labels = _sampled(1.7, n=3000)
    t = fit_temperature(logits, labels, _ce)
    assert fit_temperature(logits, labels, _ce) == t
    best = _ce(logits / t, labels).item()
    for other in (t * 0.9, t * 1.1, 1.0):
        assert _ce(logits / other, labels).item() > best


def test_multilabel_nll_fit():
    g = torch.Generator().manual_seed(1)
    logits = 2.0 * torch.randn(20_000, 4, generator=g)
    targets = torch.bernoulli((logits / 0.5).sigmoid(), generator=g)
    assert fit_temperature(logits, targets, multilabel_nll) == pytest.approx(0.5, rel=0.06)


def test_separable_data_stops_at_the_bracket_and_empty_data_is_one():
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    labels = torch.tensor([0, 1])  # all right: sharper is always better
    assert math.log(fit_temperature(logits, labels, _ce)) == pytest.approx(LOG_T_RANGE[0],
                                                                           abs=1e-6)
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), _ce) == 1.0
