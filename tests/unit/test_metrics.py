"""Unit tests for app.ml.metrics."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ml.metrics import (
    classification_metrics,
    expected_calibration_error,
    soft_cross_entropy,
)


def ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al. (2017): equal-width bins (lo, hi], weighted |accuracy - confidence|."""
    confidence = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return ece


def near_bin_edge(conf: np.ndarray, n_bins: int, tol: float = 1e-5) -> bool:
    scaled = conf.astype(np.float64) * n_bins
    return bool((np.abs(scaled - np.round(scaled)) < tol).any())


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(2, 12), temperature=st.floats(0.1, 5.0),
       seed=st.integers(0, 2**31 - 1))
def test_ece_matches_numpy_reference(n, k, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, k), generator=g) / temperature
    probs = logits.softmax(dim=1)
    labels = torch.randint(0, k, (n,), generator=g)
    # bias towards correct predictions so that accuracy is not ~1/K everywhere
    labels = torch.where(torch.rand(n, generator=g) < 0.5, probs.argmax(1), labels)
    p = probs.numpy()
    if near_bin_edge(p.max(axis=1), 15):
        return  # float32 vs float64 may disagree on which side of an edge a value lies
    got = float(expected_calibration_error(probs, labels, n_bins=15))
    assert got == pytest.approx(ece_reference(p, labels.numpy(), 15), abs=1e-5)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 20])
def test_ece_other_bin_counts_match_reference(n_bins):
    g = torch.Generator().manual_seed(n_bins)
    probs = (torch.randn(500, 5, generator=g) * 2).softmax(1)
    labels = torch.randint(0, 5, (500,), generator=g)
    got = float(expected_calibration_error(probs, labels, n_bins=n_bins))
    assert got == pytest.approx(ece_reference(probs.numpy(), labels.numpy(), n_bins), abs=1e-5)


def test_ece_is_zero_when_perfectly_calibrated():
    # 10 predictions at confidence 0.7 with 7 right, 10 at confidence 0.9 with 9 right
    probs = torch.tensor([[0.7, 0.3]] * 10 + [[0.1, 0.9]] * 10)
    labels = torch.tensor([0] * 7 + [1] * 3 + [1] * 9 + [0] * 1)
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(0.0, abs=1e-6)


def test_ece_overconfident_hand_computed():
    # bin with confidence 0.95: 6 samples, 3 right -> gap 0.45, weight 0.6
    # bin with confidence 0.55: 4 samples, 2 right -> gap 0.05, weight 0.4
    # ECE = 0.6 * 0.45 + 0.4 * 0.05 = 0.29
    probs = torch.tensor([[0.95, 0.05]] * 6 + [[0.55, 0.45]] * 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    ece = expected_calibration_error(probs, labels)
    assert ece.dim() == 0
    assert float(ece) == pytest.approx(0.29, abs=1e-6)


def test_ece_all_wrong_at_full_confidence_is_one():
    probs = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    labels = torch.tensor([1, 2, 1, 2])
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(1.0)


def test_ece_gaps_in_different_bins_do_not_cancel():
    # over-confident in one bin and under-confident in another: the gaps add up
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    labels = torch.tensor([0] * 5 + [1] * 5 + [0] * 10)
    # 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(0.4, abs=1e-6)


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 7, generator=g)
    labels = torch.randint(0, 7, (32,), generator=g)
    got = soft_cross_entropy(logits, F.one_hot(labels, 7).float())
    torch.testing.assert_close(got, F.cross_entropy(logits, labels))


def test_soft_cross_entropy_equals_cross_entropy_for_soft_targets():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 4, generator=g)
    targets = torch.rand(16, 4, generator=g).softmax(1)
    torch.testing.assert_close(soft_cross_entropy(logits, targets),
                               F.cross_entropy(logits, targets))
    # hand check on one row: -sum t log softmax
    row = -(targets[0] * logits[0].log_softmax(0)).sum()
    torch.testing.assert_close(soft_cross_entropy(logits[:1], targets[:1]), row)


def test_soft_cross_entropy_is_computed_in_float32_for_bf16_logits():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 3, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 3, (8,), generator=g)
    got = soft_cross_entropy(logits, F.one_hot(labels, 3).float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, F.cross_entropy(logits.float(), labels))


def test_soft_cross_entropy_gradient_matches_cross_entropy():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 5, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    labels = torch.randint(0, 5, (6,), generator=g)
    soft_cross_entropy(a, F.one_hot(labels, 5).float()).backward()
    F.cross_entropy(b, labels).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_classification_metrics_accuracy_loss_and_ece():
    logits = torch.tensor([
        [5.0, 0.0, 0.0],   # predicts 0, label 0: right
        [0.0, 3.0, 0.0],   # predicts 1, label 1: right
        [0.0, 0.0, 1.0],   # predicts 2, label 0: wrong
        [2.0, 1.0, 0.0],   # predicts 0, label 2: wrong
        [0.0, 0.5, 4.0],   # predicts 2, label 2: right
    ])
    labels = torch.tensor([0, 1, 0, 2, 2])
    m = classification_metrics(logits, labels)
    assert set(m) == {"loss", "acc", "ece", "f1_macro", "brier"}
    assert float(m["acc"]) == pytest.approx(3 / 5)
    torch.testing.assert_close(m["loss"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(m["ece"], expected_calibration_error(logits.softmax(1), labels))
    assert float(m["ece"]) == pytest.approx(
        ece_reference(logits.softmax(1).numpy(), labels.numpy()), abs=1e-6)


def test_classification_metrics_perfect_and_bf16_logits():
    labels = torch.tensor([0, 1, 2, 1])
    logits = F.one_hot(labels, 3).float() * 20
    m = classification_metrics(logits.to(torch.bfloat16), labels)
    assert float(m["acc"]) == 1.0
    assert float(m["loss"]) < 1e-6
    assert float(m["ece"]) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_brier_and_confusion_agree_with_scikit_learn(seed):
    from sklearn.metrics import confusion_matrix as sk_confusion
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    from app.ml.metrics import confusion_matrix, evaluation_report

    g = torch.Generator().manual_seed(seed)
    k = 5
    labels = torch.randint(0, k - 1, (200,), generator=g)  # class 4 never occurs
    logits = torch.randn(200, k, generator=g) + 2.0 * F.one_hot(labels, k)
    metrics = classification_metrics(logits, labels)
    predicted = logits.argmax(dim=1).numpy()
    y = labels.numpy()
    expected_f1 = f1_score(y, predicted, labels=list(range(k)), average="macro",
                           zero_division=0)
    assert metrics["f1_macro"].item() == pytest.approx(expected_f1, abs=1e-6)
    probs = logits.softmax(dim=1).numpy()
    onehot = np.eye(k)[y]
    assert metrics["brier"].item() == pytest.approx(((probs - onehot) ** 2).sum(1).mean(),
                                                    abs=1e-6)
    assert confusion_matrix(logits.argmax(1), labels, k).tolist() == \
        sk_confusion(y, predicted, labels=list(range(k))).tolist()
    report = evaluation_report(logits, labels, [f"c{i}" for i in range(k)])
    p, r, f, support = precision_recall_fscore_support(y, predicted, labels=list(range(k)),
                                                       zero_division=0)
    for i, row in enumerate(report["per_class"]):
        assert row["class"] == f"c{i}" and row["support"] == support[i]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))


def test_brier_is_zero_for_certain_correct_predictions_and_two_for_certain_wrong():
    labels = torch.tensor([0, 1, 2])
    right = F.one_hot(labels, 3).float() * 100
    wrong = F.one_hot((labels + 1) % 3, 3).float() * 100
    assert classification_metrics(right, labels)["brier"].item() == pytest.approx(0.0, abs=1e-6)
    assert classification_metrics(wrong, labels)["brier"].item() == pytest.approx(2.0, abs=1e-6)


# ---------------------------------------------------------------------- multilabel


def _multilabel_case(seed: int, n: int = 120, k: int = 5, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, k, generator=g) < 0.35).to(torch.uint8)
    targets[:, -1] = 0  # one class with no positive sample
    logits = torch.randn(n, k, generator=g) + 1.5 * (2.0 * targets.float() - 1.0)
    if ties:  # a coarse grid makes many equal scores
        logits = logits.round()
    return logits, targets


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True), (2, True), (3, False)])
def test_average_precision_matches_scikit_learn_ties_included(seed, ties):
    from sklearn.metrics import average_precision_score

    from app.ml.metrics import average_precision

    logits, targets = _multilabel_case(seed, ties=ties)
    ap = average_precision(logits, targets)
    for c in range(targets.shape[1] - 1):
        expected = average_precision_score(targets[:, c].numpy(), logits[:, c].numpy())
        assert ap[c].item() == pytest.approx(expected, abs=1e-6), c
    assert ap[-1].isnan()  # no positive: no AP


def test_average_precision_hand_computed():
    from app.ml.metrics import average_precision

    # ranked: pos, neg, pos, neg -> precision at the positives 1 and 2/3 -> AP = 5/6
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.1]])
    targets = torch.tensor([[1], [0], [1], [0]])
    assert average_precision(scores, targets).item() == pytest.approx(5 / 6)
    # a tie between a positive and a negative at the top counts as one threshold: P = 1/2
    tied = torch.tensor([[0.9], [0.9], [0.1]])
    assert average_precision(tied, torch.tensor([[1], [0], [0]])).item() == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_metrics_agree_with_scikit_learn(seed):
    from sklearn.metrics import average_precision_score, f1_score, multilabel_confusion_matrix

    from app.ml.metrics import multilabel_counts, multilabel_metrics

    logits, targets = _multilabel_case(seed)
    m = multilabel_metrics(logits, targets)
    assert set(m) == {"loss", "map", "f1_micro", "f1_macro", "subset_acc", "ece", "brier"}
    assert all(v.dim() == 0 for v in m.values())
    y, predicted = targets.numpy(), (logits.sigmoid() >= 0.5).numpy().astype(int)
    for average in ("micro", "macro"):
        expected = f1_score(y, predicted, average=average, zero_division=0)
        assert m[f"f1_{average}"].item() == pytest.approx(expected, abs=1e-6)
    assert multilabel_counts(logits, targets).tolist() == \
        multilabel_confusion_matrix(y, predicted).tolist()
    # mAP: the mean over the classes that have a positive sample
    aps = [average_precision_score(y[:, c], logits[:, c].numpy()) for c in range(y.shape[1] - 1)]
    assert m["map"].item() == pytest.approx(np.mean(aps), abs=1e-6)
    expected_nll = F.binary_cross_entropy_with_logits(logits, targets.float(),
                                                      reduction="sum") / len(y)
    assert m["loss"].item() == pytest.approx(expected_nll.item(), rel=1e-5)
    probs = logits.sigmoid().numpy()
    assert m["brier"].item() == pytest.approx(((probs - y) ** 2).sum(1).mean(), abs=1e-6)
    assert m["subset_acc"].item() == pytest.approx((predicted == y).all(1).mean())
    binary = np.stack([1 - probs.reshape(-1), probs.reshape(-1)], axis=1)
    assert m["ece"].item() == pytest.approx(ece_reference(binary, y.reshape(-1)), abs=1e-5)


def test_multilabel_map_without_any_positive_is_zero_and_perfect_scores_are_one():
    from app.ml.metrics import multilabel_metrics

    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.uint8)
    perfect = multilabel_metrics(20.0 * (2 * targets.float() - 1), targets)
    assert perfect["map"].item() == 1.0 and perfect["f1_micro"].item() == 1.0
    assert perfect["subset_acc"].item() == 1.0 and perfect["loss"].item() < 1e-6
    none = multilabel_metrics(torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.uint8))
    assert none["map"].item() == 0.0


def test_multilabel_report_per_class_matches_the_metrics():
    from app.ml.metrics import multilabel_metrics, multilabel_report

    logits, targets = _multilabel_case(4)
    names = [f"tag{i}" for i in range(targets.shape[1])]
    report = multilabel_report(logits, targets, names)
    assert report["task"] == "multilabel" and report["class_names"] == names
    assert report["confusion_matrix"] is None and report["threshold"] == 0.5
    rows = report["per_class"]
    assert [r["class"] for r in rows] == names
    assert [r["support"] for r in rows] == targets.sum(0).tolist()
    assert rows[-1]["ap"] is None  # no positive
    m = multilabel_metrics(logits, targets)
    assert np.mean([r["ap"] for r in rows[:-1]]) == pytest.approx(m["map"].item(), abs=1e-6)
    assert np.mean([r["f1"] for r in rows]) == pytest.approx(m["f1_macro"].item(), abs=1e-6)
    for row, counts in zip(rows, report["class_confusion"], strict=True):
        (tn, fp), (fn, tp) = counts
        assert tn + fp + fn + tp == len(targets) and tp + fn == row["support"]
