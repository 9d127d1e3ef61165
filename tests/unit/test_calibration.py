"""Temperature scaling: the fit, and what the tasks feed it."""

import math

import pytest
import torch
import torch.nn.functional as F

from app.ml.calibration import LOG_T_RANGE, at_bound, fit_temperature
from app.ml.data.synthetic import load_synthetic
from app.ml.metrics import classification_metrics, multilabel_nll
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.training import TrainSpec, train


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


def test_a_strongly_under_confident_model_is_fitted_inside_the_wider_range():
    # logit margins of a few tenths (mixup with a large α): T ≈ 0.03, below the old 1/20
    logits, labels = _sampled(1.0, n=20_000)
    fitted = fit_temperature(logits * 0.03, labels, _ce)
    assert fitted == pytest.approx(0.03, rel=0.06) and not at_bound(fitted)


def test_at_bound_says_when_the_fit_stopped_at_an_end():
    right = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    labels = torch.tensor([0, 1])
    assert at_bound(fit_temperature(right, labels, _ce))  # all right: T → 0
    assert at_bound(fit_temperature(-right, labels, _ce))  # all wrong: T → ∞
    assert not at_bound(fit_temperature(*_sampled(1.7, n=3000), _ce))


def test_sharpened_logits_keep_their_nll_in_float64():
    """T = 0.05 turns a margin of 1 into 20: float32's log-softmax rounds the NLL of
    such a sample to exactly 0, which a run then reported as a calibrated NLL of 0.0."""
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.2]]) / 0.05
    labels = torch.tensor([0, 1])
    assert classification_metrics(logits, labels)["loss"].item() == 0.0  # the artefact
    exact = classification_metrics(logits.double(), labels)
    expected = (math.log1p(math.exp(-20.0)) + math.log1p(math.exp(-24.0))) / 2
    assert exact["loss"].item() == pytest.approx(expected, rel=1e-9)
    assert exact["ece"].item() > 0.0  # confidence 1 − 2e-9, not rounded to 1


def _tabular_run(signal: float) -> dict[str, float]:
    data = load_synthetic(num_samples=200, seed=0, modalities=("tabular",),
                          signal={"tabular": signal}, tabular_features=64)
    return train(data, ModelSpec(kind="multimodal"), MixSpec(method="none"),
                 TrainSpec(epochs=5, batch_size=32, lr=0.1, device="cpu")).metrics


def test_a_fit_at_the_bound_is_flagged_and_claims_no_calibrated_figures():
    """A validation split the model gets all right has its NLL falling for ever as
    T → 0: T is the bound's, and figures at it would only describe the bound."""
    separable = _tabular_run(1.0)
    assert separable["val_acc"] == 1.0
    assert separable["temperature_at_bound"] == 1.0
    assert math.log(separable["temperature"]) == pytest.approx(LOG_T_RANGE[0], abs=1e-6)
    assert not {"test_ece_calibrated", "test_nll_calibrated"} & set(separable)
    noisy = _tabular_run(0.3)
    assert noisy["temperature_at_bound"] == 0.0
    assert noisy["test_nll_calibrated"] > 0.0 and 0.0 < noisy["test_ece_calibrated"] < 1.0
