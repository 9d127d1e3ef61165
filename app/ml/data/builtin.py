"""Datasets that ship with mixlab's dependencies (no download)."""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.data.avmnist import load_avmnist
from app.ml.data.errors import DataValidationError
from app.ml.data.fashion_mnist import load_fashion_mnist
from app.ml.data.moving_digits import load_moving_digits
from app.ml.data.prepared import PreparedDataset
from app.ml.data.splits import flip_train_labels, stratified_split
from app.ml.data.synthetic import load_synthetic


def load_digits(label_noise: float = 0.0, seed: int = 0) -> PreparedDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, as uint8 images (1, 8, 8).

    The split is fixed (seed 0) whatever the noise seed, so runs with different
    noise are evaluated on the same clean val/test samples.
    """
    if not 0.0 <= label_noise <= 0.9:
        raise DataValidationError("source.options.label_noise", "must be between 0 and 0.9")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    split = stratified_split(labels, seed=0)
    noisy = flip_train_labels(labels, split, 10, label_noise, seed)
    return PreparedDataset(
        inputs={"image": torch.from_numpy(pixels[:, None])},
        labels=torch.from_numpy(noisy),
        clean_labels=torch.from_numpy(labels),
        split=torch.from_numpy(split),
        class_names=[str(c) for c in range(10)],
        modality_kinds={"image": "image"},
        provenance={"builtin": "digits", "label_noise": label_noise, "seed": seed,
                    "source": "scikit-learn load_digits (UCI optical recognition)"},
    )


def fashion_mnist(label_noise: float = 0.0, seed: int = 0,
                  subset: int | None = None) -> PreparedDataset:
    """The ``fashion-mnist`` built-in: :func:`load_fashion_mnist` from the configured
    directory (``MIXLAB_FASHION_MNIST_DIR``); the path is not an option users set."""
    return load_fashion_mnist(label_noise=label_noise, seed=seed, subset=subset)


BUILTINS: dict[str, Callable[..., PreparedDataset]] = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "fashion-mnist": fashion_mnist,
    "avmnist": load_avmnist,
    "moving-digits": load_moving_digits,
}


# Built-ins that read files from a directory the operator configures; the
# service passes it (``roots``), users cannot set it as an option.
ROOTED = {"fashion-mnist": load_fashion_mnist}


def load_builtin(name: str, options: dict[str, Any],
                 roots: dict[str, Path] | None = None) -> PreparedDataset:
    """Load a built-in by name; an unknown name or option is a ``DataValidationError``
    naming ``source.name`` or ``source.options.<option>``."""
    if name not in BUILTINS:
        raise DataValidationError("source.name", f"unknown built-in {name!r}; "
                                  f"known: {sorted(BUILTINS)}")
    loader = BUILTINS[name]
    known = inspect.signature(loader).parameters
    for option in options:
        if option not in known:
            raise DataValidationError(f"source.options.{option}",
                                      f"unknown option for {name!r}; known: "
                                      + ", ".join(known))
    if roots and name in roots and name in ROOTED:
        return ROOTED[name](**options, root=roots[name])
    return loader(**options)
