"""Loss and evaluation metrics, as tensor ops that stay on the device."""

import math

import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 at least: float64 stays float64 (sharpened logits need it, their
    NLL underflows to 0 in float32), bf16/fp16 are widened."""
    return x if x.dtype == torch.float64 else x.float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against dense (N, K) target distributions."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = 15) -> torch.Tensor:
    """ECE (Guo et al. 2017): equal-width confidence bins (lo, hi], weighted gap
    between accuracy and mean confidence. Returns a 0-d tensor (no host sync)."""
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).float()
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    confidence = _wide(confidence)
    correct = correct.to(confidence.dtype)
    conf_sum = torch.zeros(n_bins, device=probs.device, dtype=confidence.dtype).scatter_add_(
        0, bins, confidence)
    acc_sum = torch.zeros(n_bins, device=probs.device, dtype=confidence.dtype).scatter_add_(
        0, bins, correct)
    return (conf_sum - acc_sum).abs().sum() / max(labels.shape[0], 1)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes,
                                                                         num_classes)


def per_class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and support per class from a confusion matrix; a
    score with a zero denominator is 0 (scikit-learn's zero_division=0)."""
    counts = confusion.double()
    tp = counts.diagonal()
    predicted, support = counts.sum(dim=0), counts.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12),
                     torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score: mean over samples of Σ_k (p_k − 1[k = y])²."""
    onehot = F.one_hot(labels.long(), probs.shape[-1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(dim=-1).mean()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           n_bins: int = 15) -> dict[str, torch.Tensor]:
    """loss (NLL), acc, ece, f1_macro (over all K classes) and brier for logits
    (N, K) against class indices (N,); 0-d tensors, no host sync."""
    logits = _wide(logits)
    probs = logits.softmax(dim=-1)
    predicted = probs.argmax(dim=-1)
    confusion = confusion_matrix(predicted, labels, logits.shape[-1])
    return {
        "loss": F.cross_entropy(logits, labels),
        "acc": (predicted == labels).float().mean(),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "f1_macro": per_class_scores(confusion)["f1"].mean().float(),
        "brier": brier_score(probs, labels),
    }


def evaluation_report(logits: torch.Tensor, labels: torch.Tensor,
                      class_names: list[str]) -> dict[str, object]:
    """JSON-ready confusion matrix and per-class scores of one split."""
    confusion = confusion_matrix(logits.argmax(dim=-1), labels, len(class_names)).cpu()
    scores = {k: v.cpu().tolist() for k, v in per_class_scores(confusion).items()}
    return {
        "task": "classification",
        "class_names": class_names,
        "confusion_matrix": confusion.tolist(),
        "per_class": [{"class": name, "precision": scores["precision"][i],
                       "recall": scores["recall"][i], "f1": scores["f1"][i],
                       "support": int(scores["support"][i])}
                      for i, name in enumerate(class_names)],
    }


# --- multi-label: K independent binary decisions per sample ----------------------

def multilabel_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, summed over the K classes and averaged
    over samples: the negative log-likelihood of each sample's whole label set.
    ``targets`` are multi-hot or soft (mixed, smoothed) rows in [0, 1]."""
    logits = _wide(logits)
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype),
                                                   reduction="none")
    return per_entry.sum(dim=-1).mean()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision of (N, K) scores against (N, K) 0/1 targets,
    as scikit-learn's ``average_precision_score`` computes it: Σ (R_n − R_{n−1}) P_n
    over the distinct score thresholds (tied scores form one threshold). A class
    with no positive sample has no AP: NaN. Vectorised over classes, on the device."""
    n, k = scores.shape
    if n == 0:
        return torch.full((k,), float("nan"), device=scores.device)
    order_scores, order = scores.float().sort(dim=0, descending=True, stable=True)
    hits = targets.gather(0, order).double()
    tp = hits.cumsum(dim=0)
    rank = torch.arange(1, n + 1, device=scores.device, dtype=torch.float64)[:, None]
    # a threshold's last row: the next row has a different (lower) score
    last = torch.ones_like(order_scores, dtype=torch.bool)
    last[:-1] = order_scores[:-1] != order_scores[1:]
    # every row takes the precision at the last row of its tie group
    row_of_last = torch.where(last, torch.arange(n, device=scores.device)[:, None],
                              torch.full_like(order, n))
    group_end = row_of_last.flip(0).cummin(dim=0).values.flip(0)
    precision_at_end = (tp / rank).gather(0, group_end)
    positives = hits.sum(dim=0)
    ap = (hits * precision_at_end).sum(dim=0) / positives.clamp_min(1)
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan"))).float()


def multilabel_counts(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K, 2, 2) counts per class, scikit-learn's ``multilabel_confusion_matrix``
    layout [[tn, fp], [fn, tp]], predicting a class when its probability is
    at least 0.5 (logit >= 0)."""
    predicted = (logits >= 0).long()
    truth = (targets > 0.5).long()
    cell = truth * 2 + predicted  # 0 tn, 1 fp, 2 fn, 3 tp
    k = logits.shape[-1]
    flat = cell + 4 * torch.arange(k, device=logits.device)
    return torch.bincount(flat.reshape(-1), minlength=4 * k).view(k, 2, 2)


def _binary_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and support per class from (K, 2, 2) counts;
    zero denominators give 0 (scikit-learn's zero_division=0)."""
    c = counts.double()
    tp, fp, fn = c[:, 1, 1], c[:, 0, 1], c[:, 1, 0]
    zero = torch.zeros_like(tp)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), zero)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), zero)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), zero)
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor,
                       n_bins: int = 15) -> dict[str, torch.Tensor]:
    """Metrics of (N, K) logits against (N, K) multi-hot targets, as 0-d tensors
    (no host sync):

    - ``loss``: NLL of the label sets (``multilabel_nll``);
    - ``map``: mean over the classes that have a positive sample of their AP
      (0 when none has one);
    - ``f1_micro`` / ``f1_macro``: F1 at probability 0.5, pooled over every
      (sample, class) decision / averaged over all K classes;
    - ``subset_acc``: share of samples whose whole label set is predicted exactly;
    - ``ece``: ECE (``n_bins`` bins) of the N·K binary decisions, each at the
      confidence of its predicted side, max(p, 1 − p);
    - ``brier``: mean over samples of Σ_k (p_k − y_k)².
    """
    logits = _wide(logits)
    truth = targets.to(logits.dtype)
    probs = logits.sigmoid()
    ap = average_precision(logits, truth)  # logits rank exactly; sigmoid can saturate into ties
    has_ap = ~ap.isnan()
    counts = multilabel_counts(logits, truth)
    pooled = counts.sum(dim=0).double()
    tp, fp, fn = pooled[1, 1], pooled[0, 1], pooled[1, 0]
    f1_micro = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1),
                           torch.zeros_like(tp))
    binary = torch.stack([1.0 - probs, probs], dim=-1).reshape(-1, 2)
    return {
        "loss": multilabel_nll(logits, truth),
        "map": torch.where(has_ap.any(), ap.nan_to_num(0.0).sum() / has_ap.sum().clamp_min(1),
                           torch.zeros((), device=logits.device)),
        "f1_micro": f1_micro.float(),
        "f1_macro": _binary_scores(counts)["f1"].mean().float(),
        "subset_acc": ((logits >= 0) == (truth > 0.5)).all(dim=-1).float().mean(),
        "ece": expected_calibration_error(binary, (truth > 0.5).long().reshape(-1), n_bins),
        "brier": ((probs - truth) ** 2).sum(dim=-1).mean(),
    }


def multilabel_report(logits: torch.Tensor, targets: torch.Tensor,
                      class_names: list[str]) -> dict[str, object]:
    """JSON-ready per-class AP, precision, recall, F1 and support (positives) of
    one split, and each class's 2x2 counts [[tn, fp], [fn, tp]] at probability 0.5."""
    counts = multilabel_counts(logits, targets).cpu()
    scores = {k: v.cpu().tolist() for k, v in _binary_scores(counts).items()}
    ap = average_precision(logits.float(), targets.float()).cpu().tolist()
    return {
        "task": "multilabel",
        "class_names": class_names,
        "threshold": 0.5,
        "confusion_matrix": None,
        "class_confusion": counts.tolist(),
        "per_class": [{"class": name, "precision": scores["precision"][i],
                       "recall": scores["recall"][i], "f1": scores["f1"][i],
                       "support": int(scores["support"][i]),
                       "ap": None if math.isnan(ap[i]) else ap[i]}
                      for i, name in enumerate(class_names)],
    }
