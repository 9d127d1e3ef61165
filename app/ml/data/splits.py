"""Fixed stratified splits and seeded label noise."""

import numpy as np

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def stratified_split(labels: np.ndarray, seed: int = 0,
                     fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """uint8 split code per sample (0 train, 1 val, 2 test), stratified by class."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), dtype=np.uint8)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(idx) * fractions[1])
        n_test = round(len(idx) * fractions[2])
        split[idx[len(idx) - n_val - n_test:len(idx) - n_test]] = 1
        split[idx[len(idx) - n_test:]] = 2
    return split


def flip_train_labels(labels: np.ndarray, split: np.ndarray, num_classes: int,
                      fraction: float, seed: int) -> np.ndarray:
    """Copy of ``labels`` where ``fraction`` of the training labels are changed.

    Each chosen label moves to a different class drawn uniformly, so exactly
    round(fraction * n_train) training labels are wrong; val/test stay clean.
    """
    noisy = labels.copy()
    if fraction <= 0:
        return noisy
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(split == 0)
    chosen = rng.choice(train, size=round(fraction * len(train)), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy
