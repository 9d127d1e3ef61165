"""The fashion-mnist and avmnist built-ins: the idx parser, the loaders (real
files and tiny fake ones), the missing-files message, avmnist's pairing and
determinism, and the shipped spoken-digit features."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.data import DataValidationError, load_builtin, read_idx
from app.ml.data.avmnist import ASSET, load_avmnist, load_spoken_digits, pair_utterances
from app.ml.data.fashion_mnist import (
    CLASS_NAMES,
    DEFAULT_DIR,
    FILES,
    load_fashion_mnist,
    missing_message,
)
from app.ml.data.splits import stratified_split
from app.schemas.datasets import DatasetCreate

REAL = all((DEFAULT_DIR / name).is_file() for name in FILES.values())


def _idx(data: np.ndarray, type_code: int = 0x08, magic_zero: bytes = b"\0\0") -> bytes:
    header = magic_zero + bytes([type_code, data.ndim])
    header += b"".join(struct.pack(">I", s) for s in data.shape)
    return header + data.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def _fake_fashion(root: Path, n_train: int = 1200, n_test: int = 100) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, name in FILES.items():
        _write(root / name, _idx(arrays[key]))
    return arrays


# ---- idx -------------------------------------------------------------------------

def test_read_idx_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(_write(tmp_path / "x-idx3-ubyte.gz", _idx(images)), 3),
                          images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    plain = tmp_path / "y-idx1-ubyte"
    plain.write_bytes(_idx(labels))  # not gzipped
    assert np.array_equal(read_idx(plain, 1), labels)


@pytest.mark.parametrize(("payload", "match"), [
    (_idx(np.zeros((2, 2), np.uint8), magic_zero=b"\x1f\x8b"), "magic"),
    (_idx(np.zeros((2, 2), np.uint8), type_code=0x0D), "not unsigned byte"),
    (_idx(np.zeros((1, 2, 2), np.uint8))[:-1], "needs 4"),
    (_idx(np.zeros((2, 2), np.uint8)), "expected 3"),
    (b"\0\0", "magic"),
], ids=["magic", "type", "truncated", "dims", "short"])
def test_read_idx_rejects(tmp_path: Path, payload: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_idx(_write(tmp_path / "bad.gz", payload), ndim=3)


# ---- fashion-mnist -----------------------------------------------------------------

def test_fashion_mnist_from_fake_files(tmp_path: Path) -> None:
    arrays = _fake_fashion(tmp_path)
    ds = load_fashion_mnist(label_noise=0.2, seed=3, root=tmp_path)
    assert ds.inputs["image"].shape == (1300, 1, 28, 28)
    assert ds.inputs["image"].dtype == torch.uint8
    assert ds.class_names == CLASS_NAMES
    sizes = ds.summary()["split_sizes"]
    assert sizes == {"train": 1100, "val": 100, "test": 100}
    # train (with val) first, in file order, then the official test images
    assert np.array_equal(ds.inputs["image"][:1200, 0].numpy(), arrays["train_images"])
    assert np.array_equal(ds.inputs["image"][1200:, 0].numpy(), arrays["test_images"])
    assert np.array_equal(ds.clean_labels[1200:].numpy(), arrays["test_labels"])
    assert (ds.split[1200:] == 2).all()
    val_counts = torch.bincount(ds.clean_labels[ds.split_indices("val")], minlength=10)
    assert val_counts.tolist() == [10] * 10  # stratified
    train = ds.split_indices("train")
    assert int((ds.labels[train] != ds.clean_labels[train]).sum()) == round(0.2 * 1100)
    keep = ds.split != 0
    assert torch.equal(ds.labels[keep], ds.clean_labels[keep])  # val/test stay clean


def test_fashion_mnist_subset_and_fixed_split(tmp_path: Path) -> None:
    _fake_fashion(tmp_path)
    a = load_fashion_mnist(subset=1000, seed=0, label_noise=0.3, root=tmp_path)
    b = load_fashion_mnist(subset=1000, seed=5, label_noise=0.1, root=tmp_path)
    assert a.summary()["split_sizes"] == {"train": 917, "val": 83, "test": 100}
    assert torch.bincount(a.clean_labels[a.split != 2]).tolist() == [100] * 10
    # subset and split do not depend on the noise seed
    assert torch.equal(a.inputs["image"], b.inputs["image"]) and torch.equal(a.split, b.split)
    assert torch.equal(a.clean_labels, b.clean_labels)
    assert not torch.equal(a.labels, b.labels)


def test_fashion_mnist_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as info:
        load_fashion_mnist(root=tmp_path / "nowhere")
    assert info.value.field == "source.name"
    assert info.value.reason == missing_message(tmp_path / "nowhere")
    assert "apt-get install dataset-fashion-mnist" in info.value.reason
    assert "MIXLAB_FASHION_MNIST_DIR" in info.value.reason


def test_fashion_mnist_corrupt_file(tmp_path: Path) -> None:
    _fake_fashion(tmp_path)
    (tmp_path / FILES["test_labels"]).write_bytes(b"not gzip at all")
    with pytest.raises(DataValidationError, match="unreadable"):
        load_fashion_mnist(root=tmp_path)


def test_fashion_mnist_dir_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings, get_settings

    assert Settings().fashion_mnist_dir == DEFAULT_DIR
    monkeypatch.setenv("MIXLAB_FASHION_MNIST_DIR", str(tmp_path))
    assert Settings().fashion_mnist_dir == tmp_path
    _fake_fashion(tmp_path)
    monkeypatch.setattr(get_settings(), "fashion_mnist_dir", tmp_path)
    ds = load_builtin("fashion-mnist", {"label_noise": 0.0, "seed": 0, "subset": None})
    assert ds.num_samples == 1300
    with pytest.raises(DataValidationError, match=r"source\.options\.root"):
        load_builtin("fashion-mnist", {"root": "/etc"})  # not an option users set


@pytest.mark.parametrize(("options", "field"), [
    ({"label_noise": 0.95}, "source.options.label_noise"),
    ({"subset": 999}, "source.options.subset"),
    ({"subset": 60_001}, "source.options.subset"),
    ({"seed": -1}, "source.options.seed"),
])
def test_fashion_mnist_bad_options(tmp_path: Path, options: dict, field: str) -> None:
    with pytest.raises(DataValidationError) as info:
        load_fashion_mnist(root=tmp_path, **options)
    assert info.value.field == field


@pytest.mark.skipif(not REAL, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files() -> None:
    ds = load_fashion_mnist(subset=3000, root=DEFAULT_DIR)
    assert ds.summary()["split_sizes"] == {"train": 2750, "val": 250, "test": 10_000}
    assert ds.inputs["image"].shape == (13_000, 1, 28, 28)
    test = ds.split_indices("test")
    assert torch.bincount(ds.clean_labels[test]).tolist() == [1000] * 10
    assert torch.bincount(ds.clean_labels[ds.split != 2]).tolist() == [300] * 10
    assert 50 < float(ds.inputs["image"].float().mean()) < 100  # real images, not noise
    full = read_idx(DEFAULT_DIR / FILES["train_labels"], 1)
    assert full.shape == (60_000,) and np.bincount(full).tolist() == [6000] * 10


# ---- avmnist ------------------------------------------------------------------------

def test_spoken_digits_asset() -> None:
    assert ASSET.stat().st_size < 3 * 1024**2
    spoken = load_spoken_digits()
    features, labels = spoken["features"], spoken["labels"]
    assert features.dtype == np.float16 and features.shape[1:] == (40, 32)
    assert len(features) == len(labels) == len(spoken["voice"]) == len(spoken["pitch"])
    assert np.bincount(labels, minlength=10).min() >= 60
    assert np.isfinite(features.astype(np.float32)).all()
    assert abs(float(features.astype(np.float32).mean())) < 0.05
    assert abs(float(features.astype(np.float32).std()) - 1) < 0.05
    assert len(np.unique(spoken["voice"])) >= 40
    assert len({(v, p, s) for v, p, s in zip(spoken["voice"], spoken["pitch"],
                                              spoken["speed"], strict=True)}) >= 80
    assert "espeak" in str(spoken["espeak_version"]).lower()
    assert list(spoken["words"]) == ["zero", "one", "two", "three", "four", "five", "six",
                                     "seven", "eight", "nine"]
    # different utterances of a digit differ (voices, pitches, speeds, noise)
    zero = features[labels == 0].astype(np.float32)
    assert np.abs(zero[0] - zero[1]).mean() > 0.1


def test_avmnist_shapes_and_kinds() -> None:
    ds = load_avmnist()
    assert ds.inputs["image"].shape == (1797, 1, 8, 8) and ds.inputs["image"].dtype == torch.uint8
    assert ds.inputs["audio"].shape == (1797, 1, 40, 32)
    assert ds.inputs["audio"].dtype == torch.float32
    assert list(ds.inputs) == ["image", "audio"]
    assert ds.modality_kinds == {"image": "image", "audio": "audio"}
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.summary()["split_sizes"] == {"train": 1259, "val": 269, "test": 269}
    assert ds.provenance["espeak_version"].startswith("eSpeak NG")
    assert "en-gb-scotland" in ds.provenance["accents"]


def test_avmnist_pairs_each_image_with_its_digit() -> None:
    from sklearn.datasets import load_digits

    ds = load_avmnist(seed=7, audio_noise=0.0)
    sk = load_digits()
    labels = ds.clean_labels.numpy()
    assert np.array_equal(labels, sk.target)  # image label == sample label
    spoken = load_spoken_digits()
    pairs = pair_utterances(labels, ds.split.numpy(), spoken["labels"].astype(np.int64), 7)
    assert np.array_equal(spoken["labels"][pairs], labels)  # audio label == sample label
    # with no noise the audio is exactly the paired utterance's features
    assert np.array_equal(ds.inputs["audio"][:, 0].numpy(),
                          spoken["features"][pairs].astype(np.float32))
    # val/test images hear only utterances no training image hears
    utterance_split = stratified_split(spoken["labels"].astype(np.int64), seed=0)
    assert np.array_equal(utterance_split[pairs], ds.split.numpy())
    assert len(np.unique(pairs)) > 400  # many distinct utterances used


def test_avmnist_determinism_and_noise() -> None:
    a, b = load_avmnist(seed=1, label_noise=0.3), load_avmnist(seed=1, label_noise=0.3)
    for m in ("image", "audio"):
        assert torch.equal(a.inputs[m], b.inputs[m])
    assert torch.equal(a.labels, b.labels)
    c = load_avmnist(seed=2, label_noise=0.3)
    assert not torch.equal(a.inputs["audio"], c.inputs["audio"])
    assert not torch.equal(a.labels, c.labels)
    assert torch.equal(a.split, c.split) and torch.equal(a.clean_labels, c.clean_labels)
    train = a.split_indices("train")
    assert int((a.labels[train] != a.clean_labels[train]).sum()) == round(0.3 * 1259)
    # audio noise in feature-std units; image noise only when asked for
    quiet, loud = load_avmnist(seed=1, audio_noise=0.0), load_avmnist(seed=1, audio_noise=2.0)
    diff = (loud.inputs["audio"] - quiet.inputs["audio"]).std().item()
    assert diff == pytest.approx(2.0, rel=0.02)
    assert torch.equal(quiet.inputs["image"], a.inputs["image"])
    noisy = load_avmnist(seed=1, image_noise=0.2)
    assert not torch.equal(noisy.inputs["image"], a.inputs["image"])
    assert noisy.inputs["image"].dtype == torch.uint8


@pytest.mark.parametrize(("options", "field"), [
    ({"audio_noise": -0.1}, "source.options.audio_noise"),
    ({"image_noise": 1.5}, "source.options.image_noise"),
    ({"label_noise": 1.0}, "source.options.label_noise"),
    ({"pitch": 3}, "source.options.pitch"),
])
def test_avmnist_bad_options(options: dict, field: str) -> None:
    with pytest.raises(DataValidationError) as info:
        load_builtin("avmnist", options)
    assert info.value.field == field


# ---- schemas -------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "loc"), [
    ({"name": "fashion-mnist", "options": {"subset": 10}}, ("source", "options", "subset")),
    ({"name": "fashion-mnist", "options": {"root": "/etc"}}, ("source", "options", "root")),
    ({"name": "avmnist", "options": {"audio_noise": 9}}, ("source", "options", "audio_noise")),
    ({"name": "avmnist", "options": {"label_noise": 2}}, ("source", "options", "label_noise")),
    ({"name": "mnist"}, ("source", "name")),
])
def test_schema_error_locs(source: dict, loc: tuple) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        DatasetCreate(name="x", source={"kind": "builtin", **source})
    assert loc in [tuple(e["loc"]) for e in info.value.errors()]


def test_schema_defaults() -> None:
    fashion = DatasetCreate(name="f", source={"kind": "builtin", "name": "fashion-mnist"})
    assert fashion.source.options.model_dump() == {"label_noise": 0.0, "seed": 0,
                                                   "subset": None}
    av = DatasetCreate(name="a", source={"kind": "builtin", "name": "avmnist"})
    assert av.source.options.model_dump() == {"label_noise": 0.0, "seed": 0,
                                              "audio_noise": 0.5, "image_noise": 0.0,
                                              "occlusion": 0.0, "audio_mask": 0.0}
