"""Unit tests for app.ml.data: digits, splits, label noise, prepared form and npz ingestion."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.data import (
    SPLITS,
    DataValidationError,
    NpzLimits,
    PreparedDataset,
    from_bytes,
    load_builtin,
    load_digits,
    prepare_npz,
    to_bytes,
)
from app.ml.data.splits import flip_train_labels, stratified_split

# ------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


def test_digits_shape_dtype_and_classes(digits):
    image = digits.inputs["image"]
    assert digits.num_samples == 1797
    assert image.shape == (1797, 1, 8, 8)
    assert image.dtype == torch.uint8
    assert int(image.max()) == 255 and int(image.min()) == 0
    assert digits.labels.shape == (1797,)
    assert digits.num_classes == 10
    assert digits.class_names == [str(i) for i in range(10)]
    assert sorted(digits.labels.unique().tolist()) == list(range(10))
    assert digits.modality_kinds == {"image": "image"}
    assert torch.equal(digits.labels, digits.clean_labels)


def test_digits_splits_partition_the_data(digits):
    parts = [digits.split_indices(s) for s in SPLITS]
    sizes = [len(p) for p in parts]
    assert all(s > 0 for s in sizes)
    assert sum(sizes) == 1797
    assert len(torch.cat(parts).unique()) == 1797
    assert set(digits.split.unique().tolist()) == {0, 1, 2}
    # roughly 70/15/15 and stratified: every class is in every split
    assert sizes[0] / 1797 == pytest.approx(0.70, abs=0.02)
    for p in parts:
        assert sorted(digits.labels[p].unique().tolist()) == list(range(10))


def test_digits_split_is_the_same_whatever_the_noise_seed(digits):
    for noise, seed in [(0.0, 1), (0.2, 0), (0.4, 7), (0.9, 123)]:
        other = load_digits(label_noise=noise, seed=seed)
        assert torch.equal(other.split, digits.split)
        assert torch.equal(other.inputs["image"], digits.inputs["image"])
        assert torch.equal(other.clean_labels, digits.clean_labels)


@pytest.mark.parametrize("noise", [0.1, 0.4, 0.9])
def test_label_noise_flips_exactly_the_requested_share_of_train_labels(digits, noise):
    noisy = load_digits(label_noise=noise, seed=3)
    train = noisy.split_indices("train")
    flipped = noisy.labels[train] != noisy.clean_labels[train]
    assert int(flipped.sum()) == round(noise * len(train))
    # the clean labels are the originals
    assert torch.equal(noisy.clean_labels, digits.labels)
    # val and test stay clean
    for split in ("val", "test"):
        idx = noisy.split_indices(split)
        assert torch.equal(noisy.labels[idx], noisy.clean_labels[idx])
    assert ((noisy.labels >= 0) & (noisy.labels < 10)).all()
    assert noisy.summary()["noisy_train_labels"] == round(noise * len(train))
    assert noisy.provenance["label_noise"] == noise


def test_label_noise_depends_on_seed_and_is_reproducible():
    a = load_digits(label_noise=0.4, seed=1)
    b = load_digits(label_noise=0.4, seed=1)
    c = load_digits(label_noise=0.4, seed=2)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


@pytest.mark.parametrize("noise", [-0.1, 0.95, 1.0, 2.0])
def test_label_noise_out_of_range_raises(noise):
    with pytest.raises(DataValidationError) as info:
        load_digits(label_noise=noise)
    assert info.value.field == "source.options.label_noise"
    assert "source.options.label_noise" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_builtin():
    ds = load_builtin("digits", {"label_noise": 0.1, "seed": 4})
    assert ds.num_samples == 1797 and ds.provenance["builtin"] == "digits"
    with pytest.raises(DataValidationError) as info:
        load_builtin("imagenet", {})
    assert info.value.field == "source.name"
    with pytest.raises(DataValidationError) as info:
        load_builtin("digits", {"label_noise": 5.0})
    assert info.value.field == "source.options.label_noise"


def test_stratified_split_and_flip_on_small_arrays():
    labels = np.repeat(np.arange(4), 20)
    split = stratified_split(labels, seed=0)
    assert split.dtype == np.uint8
    for cls in range(4):
        counts = np.bincount(split[labels == cls], minlength=3)
        assert counts.tolist() == [14, 3, 3]
    noisy = flip_train_labels(labels, split, 4, 0.5, seed=0)
    train = split == 0
    changed = noisy != labels
    assert int(changed.sum()) == round(0.5 * train.sum())
    assert not changed[~train].any()
    assert np.array_equal(flip_train_labels(labels, split, 4, 0.0, seed=0), labels)


# ----------------------------------------------------------------- prepared bytes


def test_to_bytes_from_bytes_round_trip(digits):
    noisy = load_digits(label_noise=0.3, seed=5)
    back = from_bytes(to_bytes(noisy))
    assert set(back.inputs) == {"image"}
    for name in ("image",):
        assert back.inputs[name].dtype == noisy.inputs[name].dtype
        assert torch.equal(back.inputs[name], noisy.inputs[name])
    for attr in ("labels", "clean_labels", "split"):
        a, b = getattr(back, attr), getattr(noisy, attr)
        assert a.dtype == b.dtype and torch.equal(a, b), attr
    assert back.class_names == noisy.class_names
    assert back.modality_kinds == noisy.modality_kinds
    assert back.provenance == noisy.provenance
    assert back.summary() == noisy.summary()


def test_round_trip_multimodal_float_and_odd_names():
    ds = PreparedDataset(
        inputs={"image": torch.rand(6, 3, 4, 4), "tab": torch.randn(6, 5).double()},
        labels=torch.tensor([0, 1, 2, 0, 1, 2]),
        clean_labels=torch.tensor([0, 1, 2, 0, 1, 1]),
        split=torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.uint8),
        class_names=["cat", "dög", "bird \"quoted\""],
        modality_kinds={"image": "image", "tab": "tabular"},
        provenance={"upload": "x.npz", "nested": {"a": [1, 2.5, None]}},
    )
    back = from_bytes(to_bytes(ds))
    assert set(back.inputs) == {"image", "tab"}
    assert back.inputs["tab"].dtype == torch.float64
    assert torch.equal(back.inputs["tab"], ds.inputs["tab"])
    assert torch.equal(back.inputs["image"], ds.inputs["image"])
    assert torch.equal(back.clean_labels, ds.clean_labels)
    assert back.class_names == ds.class_names
    assert back.modality_kinds == ds.modality_kinds
    assert back.provenance == ds.provenance


def test_round_trip_non_contiguous_inputs():
    image = torch.rand(4, 4, 2, 1).permute(0, 3, 2, 1)  # not contiguous
    ds = PreparedDataset(inputs={"image": image}, labels=torch.tensor([0, 1, 0, 1]),
                         clean_labels=torch.tensor([0, 1, 0, 1]),
                         split=torch.tensor([0, 1, 2, 0], dtype=torch.uint8),
                         class_names=["a", "b"], modality_kinds={"image": "image"})
    back = from_bytes(to_bytes(ds))
    assert torch.equal(back.inputs["image"], image)


# -------------------------------------------------------------------------- npz


def write_npz(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def field_of(path: Path, limits: NpzLimits | None = None) -> str:
    with pytest.raises(DataValidationError) as info:
        prepare_npz(path, limits)
    assert str(info.value).startswith(info.value.field + ":")
    return info.value.field


def good_images(n: int = 30, h: int = 5, w: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w), dtype=np.uint8)


def good_labels(n: int = 30, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"this is not a zip archive at all")
    assert field_of(path) == "file"
    # a bare .npy is not an .npz either
    np.save(tmp_path / "bare.npy", good_images())
    assert field_of(tmp_path / "bare.npy") == "file"


def test_npz_over_uncompressed_limit(tmp_path):
    path = write_npz(tmp_path, image=good_images(), label=good_labels())
    assert field_of(path, NpzLimits(max_uncompressed_bytes=100)) == "file"


def test_npz_missing_image(tmp_path):
    assert field_of(write_npz(tmp_path, label=good_labels())) == "image"


def test_npz_missing_label(tmp_path):
    assert field_of(write_npz(tmp_path, image=good_images())) == "label"


def test_npz_length_mismatch(tmp_path):
    path = write_npz(tmp_path, image=good_images(30), label=good_labels(29))
    assert field_of(path) == "label"


def test_npz_label_wrong_ndim(tmp_path):
    path = write_npz(tmp_path, image=good_images(30), label=good_labels(30)[:, None])
    assert field_of(path) == "label"


@pytest.mark.parametrize("name", ["image", "label", "class_names", "split"])
def test_npz_object_array_names_the_field(tmp_path, name):
    arrays = {"image": good_images(), "label": good_labels()}
    arrays[name] = np.array([{"a": 1}] * 30, dtype=object)
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(DataValidationError) as info:
        prepare_npz(path)
    assert info.value.field == name
    assert "object" in info.value.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_float_image(tmp_path, bad):
    image = np.random.default_rng(0).random((30, 1, 4, 4)).astype(np.float32)
    image[17, 0, 2, 3] = bad
    with pytest.raises(DataValidationError) as info:
        prepare_npz(write_npz(tmp_path, image=image, label=good_labels()))
    assert info.value.field == "image"
    assert "sample 17" in info.value.reason


@pytest.mark.parametrize("shape", [(30,), (30, 8), (30, 1, 4, 4, 1)])
def test_npz_image_wrong_ndim(tmp_path, shape):
    image = np.zeros(shape, dtype=np.uint8)
    assert field_of(write_npz(tmp_path, image=image, label=good_labels())) == "image"


def test_npz_image_too_many_channels(tmp_path):
    image = np.zeros((30, 5, 4, 4), dtype=np.uint8)
    assert field_of(write_npz(tmp_path, image=image, label=good_labels())) == "image"
    # channels-last RGB (N, H, W, 3) with H > max_channels is rejected too
    image = np.zeros((30, 8, 8, 3), dtype=np.uint8)
    assert field_of(write_npz(tmp_path, image=image, label=good_labels())) == "image"


def test_npz_image_side_over_limit(tmp_path):
    path = write_npz(tmp_path, image=good_images(30, 5, 9), label=good_labels())
    assert field_of(path, NpzLimits(max_side=8)) == "image"
    path = write_npz(tmp_path, image=good_images(30, 9, 5), label=good_labels())
    assert field_of(path, NpzLimits(max_side=8)) == "image"
    assert prepare_npz(path, NpzLimits(max_side=9)).inputs["image"].shape == (30, 1, 9, 5)


def test_npz_too_many_samples_or_classes(tmp_path):
    path = write_npz(tmp_path, image=good_images(30), label=good_labels(30, 6))
    assert field_of(path, NpzLimits(max_samples=29)) == "image"
    assert field_of(path, NpzLimits(max_classes=5)) == "label"


def test_npz_empty_image(tmp_path):
    path = write_npz(tmp_path, image=np.zeros((0, 4, 4), np.uint8),
                     label=np.zeros(0, np.int64))
    assert field_of(path) == "image"


def test_npz_non_numeric_image(tmp_path):
    image = np.full((30, 4, 4), "x")
    assert field_of(write_npz(tmp_path, image=image, label=good_labels())) == "image"


def test_npz_unexpected_array(tmp_path):
    path = write_npz(tmp_path, image=good_images(), label=good_labels(), extra=np.zeros(3))
    with pytest.raises(DataValidationError) as info:
        prepare_npz(path)
    assert info.value.field == "extra"
    assert "unexpected" in info.value.reason


def test_npz_single_class(tmp_path):
    path = write_npz(tmp_path, image=good_images(), label=np.zeros(30, np.int64))
    assert field_of(path) == "label"


def test_npz_float_labels_rejected(tmp_path):
    path = write_npz(tmp_path, image=good_images(), label=good_labels().astype(np.float32))
    assert field_of(path) == "label"


def test_npz_too_few_samples_per_class_for_a_split(tmp_path):
    # two samples per class: round(2 * 0.15) = 0 for val and test, so those are empty
    path = write_npz(tmp_path, image=good_images(6), label=np.array([0, 0, 1, 1, 2, 2]))
    assert field_of(path) == "label"


@pytest.mark.parametrize("split", [
    np.array([0, 1, 2, 3] * 7 + [0, 1]),                     # 3 is not a split
    np.array([0, 1, -1] * 10),                                # negative
    np.array(["train", "val", "tset"] * 10),                  # typo
    np.array([0.0, 1.0, 2.0] * 10),                           # float codes
    np.array([0, 1, 2] * 9),                                  # wrong length
    np.array([0, 0, 2] * 10),                                 # val empty
    np.array(["train"] * 30),                                 # val and test empty
])
def test_npz_bad_split_array(tmp_path, split):
    path = write_npz(tmp_path, image=good_images(), label=good_labels(), split=split)
    assert field_of(path) == "split"


def test_npz_class_names_errors(tmp_path):
    path = write_npz(tmp_path, image=good_images(), label=good_labels(),
                     class_names=np.array(["a", "b"]))           # label 2 out of range
    assert field_of(path) == "label"
    path = write_npz(tmp_path, image=good_images(), label=good_labels(),
                     class_names=np.array([1, 2, 3]))             # not strings
    assert field_of(path) == "class_names"
    path = write_npz(tmp_path, image=good_images(), label=np.array(["a", "b", "c"] * 10),
                     class_names=np.array(["a", "b", "c"]))      # labels must be indices
    assert field_of(path) == "label"


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_npz_truncated_member(tmp_path):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("image.npy", npy_bytes(good_images())[:-100])
        zf.writestr("label.npy", npy_bytes(good_labels()))
    assert field_of(path) == "image"


def test_npz_zip_with_garbage_member(tmp_path):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("image.npy", b"garbage, not an npy header")
        zf.writestr("label.npy", npy_bytes(good_labels()))
    assert field_of(path) == "image"


# ----------------------------------------------------------------- npz happy paths


def test_npz_uint8_nhw(tmp_path):
    image = good_images(30, 5, 6)
    labels = np.array([3, 7, 9] * 10)
    ds = prepare_npz(write_npz(tmp_path, image=image, label=labels))
    assert ds.inputs["image"].shape == (30, 1, 5, 6)
    assert ds.inputs["image"].dtype == torch.uint8
    assert np.array_equal(ds.inputs["image"][:, 0].numpy(), image)
    # labels are re-coded to 0..K-1 in sorted order of the original values
    assert ds.class_names == ["3", "7", "9"]
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [0, 1, 2] * 10
    assert torch.equal(ds.labels, ds.clean_labels)
    assert ds.modality_kinds == {"image": "image"}
    assert ds.provenance == {"upload": "data.npz", "format": "npz"}
    assert all(len(ds.split_indices(s)) > 0 for s in SPLITS)
    assert ds.summary()["split_sizes"] == {
        s: len(ds.split_indices(s)) for s in SPLITS}


def test_npz_float32_nchw(tmp_path):
    image = np.random.default_rng(1).standard_normal((30, 3, 4, 4)).astype(np.float32)
    ds = prepare_npz(write_npz(tmp_path, image=image, label=good_labels()),
                     original_name="mine.npz")
    assert ds.inputs["image"].dtype == torch.float32
    assert ds.inputs["image"].shape == (30, 3, 4, 4)
    assert np.array_equal(ds.inputs["image"].numpy(), image)
    assert ds.provenance["upload"] == "mine.npz"


def test_npz_float64_becomes_float32_and_wide_ints_keep_range(tmp_path):
    image = np.random.default_rng(1).random((30, 4, 4))
    ds = prepare_npz(write_npz(tmp_path, "a.npz", image=image, label=good_labels()))
    assert ds.inputs["image"].dtype == torch.float32
    small = np.arange(30 * 16, dtype=np.int64).reshape(30, 4, 4) % 256
    ds = prepare_npz(write_npz(tmp_path, "b.npz", image=small, label=good_labels()))
    assert ds.inputs["image"].dtype == torch.uint8
    assert np.array_equal(ds.inputs["image"][:, 0].numpy(), small)
    wide = small * 10
    ds = prepare_npz(write_npz(tmp_path, "c.npz", image=wide, label=good_labels()))
    assert ds.inputs["image"].dtype == torch.float32
    assert np.array_equal(ds.inputs["image"][:, 0].numpy(), wide.astype(np.float32))


def test_npz_bool_image(tmp_path):
    image = np.random.default_rng(2).random((30, 4, 4)) > 0.5
    ds = prepare_npz(write_npz(tmp_path, image=image, label=good_labels()))
    assert ds.inputs["image"].dtype == torch.uint8
    assert set(ds.inputs["image"].unique().tolist()) == {0, 255}


def test_npz_string_labels(tmp_path):
    labels = np.array(["dog", "cat", "bird"] * 10)
    ds = prepare_npz(write_npz(tmp_path, image=good_images(), label=labels))
    assert ds.class_names == ["bird", "cat", "dog"]
    decoded = [ds.class_names[i] for i in ds.labels.tolist()]
    assert decoded == labels.tolist()


@pytest.mark.parametrize("split", [
    np.array([0, 0, 1, 2, 0, 0] * 5, dtype=np.int64),
    np.array([0, 0, 1, 2, 0, 0] * 5, dtype=np.uint8),
    np.array(["train", "train", "val", "test", "train", "train"] * 5),
])
def test_npz_explicit_split(tmp_path, split):
    ds = prepare_npz(write_npz(tmp_path, image=good_images(), label=good_labels(), split=split))
    assert ds.split.tolist() == [0, 0, 1, 2, 0, 0] * 5
    assert ds.split.dtype == torch.uint8


def test_npz_class_names(tmp_path):
    names = np.array(["zero", "one", "two", "unused"])
    ds = prepare_npz(write_npz(tmp_path, image=good_images(), label=good_labels(),
                               class_names=names))
    assert ds.class_names == ["zero", "one", "two", "unused"]
    assert ds.num_classes == 4
    assert ds.labels.tolist() == good_labels().tolist()


def test_npz_compressed_and_round_trip(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, image=good_images(), label=np.array(["x", "y"] * 15))
    ds = prepare_npz(path)
    back = from_bytes(to_bytes(ds))
    assert torch.equal(back.inputs["image"], ds.inputs["image"])
    assert back.class_names == ["x", "y"]
    assert torch.equal(back.split, ds.split)
