"""Dataset formats, ingestion and the canonical prepared form."""

from app.ml.data.avmnist import load_avmnist
from app.ml.data.builtin import BUILTINS, load_builtin, load_digits
from app.ml.data.errors import DataValidationError
from app.ml.data.fashion_mnist import load_fashion_mnist, read_idx
from app.ml.data.moving_digits import load_moving_digits
from app.ml.data.npz import NpzLimits, prepare_npz
from app.ml.data.prepared import SPLITS, PreparedDataset, from_bytes, to_bytes
from app.ml.data.synthetic import load_synthetic

__all__ = [
    "BUILTINS",
    "SPLITS",
    "DataValidationError",
    "NpzLimits",
    "PreparedDataset",
    "from_bytes",
    "load_avmnist",
    "load_builtin",
    "load_digits",
    "load_fashion_mnist",
    "load_moving_digits",
    "load_synthetic",
    "prepare_npz",
    "read_idx",
    "to_bytes",
]
