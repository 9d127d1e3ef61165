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


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           n_bins: int = 15) -> dict[str, torch.Tensor]:
    """loss (NLL), acc and ece for logits (N, K) against class indices (N,)."""
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    return {
        "loss": F.cross_entropy(logits, labels),
        "acc": (probs.argmax(dim=-1) == labels).float().mean(),
        "ece": expected_calibration_error(probs, labels, n_bins),
    }
