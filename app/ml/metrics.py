"""Loss and evaluation metrics, as tensor ops that stay on the device."""

import torch
import torch.nn.functional as F


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
    conf_sum = torch.zeros(n_bins, device=probs.device).scatter_add_(0, bins, confidence.float())
    acc_sum = torch.zeros(n_bins, device=probs.device).scatter_add_(0, bins, correct)
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
    logits = logits.float()
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
        "class_names": class_names,
        "confusion_matrix": confusion.tolist(),
        "per_class": [{"class": name, "precision": scores["precision"][i],
                       "recall": scores["recall"][i], "f1": scores["f1"][i],
                       "support": int(scores["support"][i])}
                      for i, name in enumerate(class_names)],
    }
