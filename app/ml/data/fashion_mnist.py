"""Fashion-MNIST (Zalando, MIT licence): 70,000 real 28x28 grey images of 10 clothes.

Read from the gzipped idx files Debian's ``dataset-fashion-mnist`` package
installs under ``/usr/share/datasets/fashion-mnist/`` (``MIXLAB_FASHION_MNIST_DIR``
elsewhere); nothing is downloaded. The official 10,000 test images are the test
split; a fixed stratified twelfth of the (optionally subsetted) 60,000 training
images is the validation split (5,000 of 60,000).
"""

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.prepared import PreparedDataset
from app.ml.data.splits import flip_train_labels

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SUBSET_BOUNDS = (1000, 60_000)
VAL_FRACTION = 1 / 12

# idx: two zero bytes, a type code, the number of dimensions, then big-endian
# uint32 sizes and the data; 0x08 is unsigned byte, the only type used here.
_UBYTE = 0x08


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The uint8 array in an idx file (gzipped when the name ends in ``.gz``).

    Raises ``ValueError`` on a bad magic number, another element type, an
    unexpected number of dimensions, or a size that does not match the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path.name}: not an idx file (bad magic number)")
    if raw[2] != _UBYTE:
        raise ValueError(f"{path.name}: idx element type 0x{raw[2]:02x} is not unsigned byte")
    dims = raw[3]
    if dims == 0 or (ndim is not None and dims != ndim):
        raise ValueError(f"{path.name}: idx file has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError(f"{path.name}: idx header is truncated")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path.name}: idx data has {len(raw) - header} bytes, "
                         f"shape {shape} needs {int(np.prod(shape))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def default_dir() -> Path:
    """``MIXLAB_FASHION_MNIST_DIR`` if set, else Debian's path. (The service passes
    its configured directory explicitly; this default serves notebook use.)"""
    return Path(os.environ.get("MIXLAB_FASHION_MNIST_DIR") or DEFAULT_DIR)


def missing_message(root: Path) -> str:
    return (f"fashion-mnist files not found under {root}; install Debian's "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set "
            "MIXLAB_FASHION_MNIST_DIR")


def read_fashion_mnist(root: str | Path) -> dict[str, np.ndarray]:
    """The four arrays (train/test images (N, 28, 28), labels (N,)), checked."""
    root = Path(root)
    if not all((root / name).is_file() for name in FILES.values()):
        raise DataValidationError("source.name", missing_message(root))
    arrays: dict[str, np.ndarray] = {}
    try:
        for key, name in FILES.items():
            arrays[key] = read_idx(root / name, ndim=3 if key.endswith("images") else 1)
    except (OSError, EOFError, ValueError) as exc:  # gzip errors are OSError
        raise DataValidationError("source.name",
                                  f"fashion-mnist files under {root} are unreadable: {exc}") \
            from None
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(images) != len(labels) or images.shape[1:] != (28, 28) \
                or (len(labels) and int(labels.max()) >= len(CLASS_NAMES)):
            raise DataValidationError("source.name", f"fashion-mnist {part} files under "
                                      f"{root} do not match (images {images.shape}, "
                                      f"labels {labels.shape})")
    return arrays


def _stratified_take(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` samples, each class in proportion (largest remainders)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[:size - take.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def load_fashion_mnist(label_noise: float = 0.0, seed: int = 0, subset: int | None = None,
                       root: str | Path | None = None) -> PreparedDataset:
    """Fashion-MNIST as uint8 images (1, 28, 28): train (+ val) then the official test.

    ``subset`` takes a stratified subset of the 60,000 training images (fixed,
    whatever the noise seed); a twelfth of the training images, stratified and
    fixed, is the validation split; ``label_noise`` flips that share of the
    training labels (seeded by ``seed``). ``root`` defaults to
    ``MIXLAB_FASHION_MNIST_DIR``.
    """
    if isinstance(label_noise, bool) or not isinstance(label_noise, int | float) \
            or not 0.0 <= label_noise <= 0.9:
        raise DataValidationError("source.options.label_noise", "must be between 0 and 0.9")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1:
        raise DataValidationError("source.options.seed", "must be an integer from 0 to 2^31-1")
    lo, hi = SUBSET_BOUNDS
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int)
                               or not lo <= subset <= hi):
        raise DataValidationError("source.options.subset",
                                  f"must be an integer from {lo} to {hi}, or null for all")
    root = Path(root) if root is not None else default_dir()
    arrays = read_fashion_mnist(root)
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    if subset is not None and subset < len(train_labels):
        keep = _stratified_take(train_labels, subset, np.random.default_rng([0, 1]))
        train_images, train_labels = train_images[keep], train_labels[keep]

    n_train, n_test = len(train_labels), len(arrays["test_labels"])
    split = np.zeros(n_train + n_test, dtype=np.uint8)
    val = _stratified_take(train_labels, round(n_train * VAL_FRACTION),
                           np.random.default_rng([0, 2]))
    split[val] = 1
    split[n_train:] = 2
    labels = np.concatenate([train_labels, arrays["test_labels"]]).astype(np.int64)
    images = np.concatenate([train_images, arrays["test_images"]])[:, None]
    noisy = flip_train_labels(labels, split, len(CLASS_NAMES), label_noise, seed)
    provenance: dict[str, Any] = {
        "builtin": "fashion-mnist", "label_noise": label_noise, "seed": seed,
        "subset": subset,
        "source": "Fashion-MNIST (Zalando Research, MIT licence), idx files of Debian's "
                  "dataset-fashion-mnist",
        "split": "official 10,000 test images; a fixed stratified 1/12 of train is val",
    }
    return PreparedDataset(
        inputs={"image": torch.from_numpy(np.ascontiguousarray(images))},
        labels=torch.from_numpy(noisy),
        clean_labels=torch.from_numpy(labels),
        split=torch.from_numpy(split),
        class_names=list(CLASS_NAMES),
        modality_kinds={"image": "image"},
        provenance=provenance,
    )
