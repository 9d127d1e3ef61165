"""The .npz submission check: what the headers show, with prepare_npz's own messages."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.ml.data import DataValidationError, prepare_npz
from app.ml.data.npz import NpzLimits
from app.ml.data.npz_header import probe_npz

N = 60


def _npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _images(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 6, 6), dtype=np.uint8)


def _labels(n: int = N) -> np.ndarray:
    return np.arange(n) % 3


HEADER_PROBLEMS = [
    ({"label": _labels()}, "image", "missing"),
    ({"image": _images()}, "label", "missing"),
    ({"image": _images(), "label": _labels(59)}, "label", "59 entries"),
    ({"image": _images(), "label": np.array([{"a": 1}] * N, dtype=object)}, "label",
     "object dtype"),
    ({"image": np.zeros((N, 9, 4, 4), np.uint8), "label": _labels()}, "image", "channels"),
    ({"image": np.zeros((N, 4), np.uint8), "label": _labels()}, "image", "shape"),
    ({"image": np.zeros((N, 4, 600), np.uint8), "label": _labels()}, "image", "each side"),
    ({"image": _images(), "label": _labels(), "extra": np.zeros(3)}, "extra", "unexpected"),
    ({"tabular": np.ones((N, 2)), "audio": np.ones((N - 1, 8)), "label": _labels()},
     "tabular", "has 60 samples but audio has 59"),
    ({"text": np.ones((N, 4), np.float32), "label": _labels()}, "text", "not integer"),
    ({"image": _images(), "label": _labels(), "split": np.zeros(N - 2, int)}, "split",
     "expected shape"),
    ({"image": _images(), "label": np.zeros((N, 2, 2))}, "label", "expected shape"),
    ({"image": _images(), "label": np.zeros((N, 3)), "class_names": np.array(["a", "b"])},
     "class_names", "2 names but label has 3 columns"),
    ({"image": _images(), "label": _labels(), "vocab": np.array(["a", "b"])}, "vocab",
     "without a text array"),
]


@pytest.mark.parametrize(("arrays", "field", "words"), HEADER_PROBLEMS)
@pytest.mark.parametrize("compressed", [False, True])
def test_header_problems_match_the_preparation(tmp_path: Path, arrays: dict, field: str,
                                               words: str, compressed: bool) -> None:
    path = _npz(tmp_path / "d.npz", compressed, **arrays)
    with pytest.raises(DataValidationError) as probed:
        probe_npz(path)
    with pytest.raises(DataValidationError) as prepared:
        prepare_npz(path)
    assert probed.value.field == prepared.value.field == field
    assert words in probed.value.reason
    assert str(probed.value) == str(prepared.value)


@pytest.mark.parametrize(("arrays", "field", "words"), [
    ({"image": np.full((N, 4, 4), np.nan, np.float32), "label": _labels()}, "image", "NaN"),
    ({"image": _images(), "label": np.zeros(N, int)}, "label", "2 classes"),
    ({"image": _images(), "label": _labels(), "split": np.full(N, 5)}, "split", "0 (train)"),
    ({"text": -np.ones((N, 4), int), "label": _labels()}, "text", "negative"),
])
def test_value_problems_pass_the_probe_and_fail_the_preparation(
        tmp_path: Path, arrays: dict, field: str, words: str) -> None:
    path = _npz(tmp_path / "d.npz", **arrays)
    probe_npz(path)
    with pytest.raises(DataValidationError) as info:
        prepare_npz(path)
    assert info.value.field == field and words in info.value.reason


def test_good_files_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    text = rng.integers(1, 9, (N, 5))
    probe_npz(_npz(tmp_path / "a.npz", image=_images(), label=np.array(["a", "b"] * 30)))
    probe_npz(_npz(tmp_path / "b.npz", compressed=True, text=text,
                   vocab=np.array([f"w{i}" for i in range(9)]),
                   tabular=rng.normal(size=(N, 3)), audio=rng.normal(size=(N, 2, 8, 8)),
                   label=(rng.random((N, 4)) > 0.5).astype(np.uint8),
                   split=np.array(["train", "val", "test"] * 20)))


def test_not_a_zip_and_unpacked_size(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(DataValidationError, match=r"not an \.npz archive"):
        probe_npz(bad)
    path = _npz(tmp_path / "d.npz", image=_images(), label=_labels())
    with pytest.raises(DataValidationError, match="over the limit of 100"):
        probe_npz(path, NpzLimits(max_uncompressed_bytes=100))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("image.npy", b"not a npy header")
    raw = tmp_path / "raw.npz"
    raw.write_bytes(buf.getvalue())
    with pytest.raises(DataValidationError, match=r"image: not a \.npy array"):
        probe_npz(raw)
