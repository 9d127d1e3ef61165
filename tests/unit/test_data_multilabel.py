"""Multi-label targets and missing modalities in the prepared form, the .npz
upload and the synthetic built-in."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from app.ml.data import (
    DataValidationError,
    PreparedDataset,
    from_bytes,
    load_builtin,
    prepare_npz,
    to_bytes,
)
from app.ml.data.npz import rarest_class
from app.ml.data.prepared import SPLITS
from app.ml.data.synthetic import KEYWORDS_PER_CLASS, load_synthetic

SMALL = {"num_samples": 300, "image_size": 8, "text_length": 8, "audio_bins": 8,
         "audio_frames": 8}


@pytest.fixture(scope="module")
def multi() -> PreparedDataset:
    return load_synthetic(**SMALL, labels_per_sample=3, missing_rate=0.3)


# ------------------------------------------------------------------ prepared form


def test_multilabel_summary_counts_positives_per_split(multi):
    assert multi.multilabel and multi.labels.shape == (300, 4)
    assert multi.labels.dtype == torch.uint8 and multi.clean_labels.dtype == torch.uint8
    summary = multi.summary()
    assert summary["multilabel"] is True
    for k, entry in enumerate(summary["classes"]):
        for s in SPLITS:
            rows = multi.split_indices(s)
            assert entry["split_counts"][s] == int(multi.labels[rows, k].sum())
        assert entry["count"] == int(multi.labels[:, k].sum())
    assert summary["noisy_train_labels"] == 0
    assert load_synthetic(**SMALL).summary()["multilabel"] is False


def test_summary_shows_missing_counts_per_modality(multi):
    entries = {m["name"]: m for m in multi.summary()["modalities"]}
    for name, mask in multi.present.items():
        lacking = ~mask
        assert entries[name]["missing"] == int(lacking.sum()) > 0
        assert entries[name]["missing_split_counts"] == {
            s: int(lacking[multi.split_indices(s)].sum()) for s in SPLITS}
    # a dataset where every sample has everything lists no missing counts
    assert all("missing" not in m for m in load_synthetic(**SMALL).summary()["modalities"])


def test_round_trip_keeps_multi_hot_labels_and_presence(multi):
    back = from_bytes(to_bytes(multi))
    assert back.multilabel and back.labels.dtype == torch.uint8
    assert torch.equal(back.labels, multi.labels)
    assert torch.equal(back.clean_labels, multi.clean_labels)
    assert list(back.inputs) == list(multi.inputs)  # masks are not modalities
    assert set(back.present) == set(multi.present)
    for name, mask in multi.present.items():
        assert back.present[name].dtype == torch.bool and torch.equal(back.present[name], mask)
    assert back.summary() == multi.summary()


def test_blob_without_presence_masks_loads_with_every_modality_present():
    ds = load_synthetic(**SMALL, modalities=("image", "tabular"))
    blob = to_bytes(ds)
    assert b"present." not in blob[:2000]
    back = from_bytes(blob)
    assert back.present == {} and bool(back.presence("image").all())
    # a blob as written before masks and multi-label labels existed
    old = st_save({"image": ds.inputs["image"], "label": ds.labels,
                   "label_clean": ds.clean_labels, "split": ds.split},
                  metadata={"mixlab": '{"class_names": ["a", "b", "c", "d"], '
                                      '"modality_kinds": {"image": "image"}, "provenance": {}}'})
    loaded = from_bytes(old)
    assert list(loaded.inputs) == ["image"] and loaded.present == {}
    assert not loaded.multilabel


def test_presence_mask_for_an_unknown_modality_is_refused():
    ds = load_synthetic(**SMALL, modalities=("tabular",))
    ds.present["image"] = torch.ones(ds.num_samples, dtype=torch.bool)
    with pytest.raises(ValueError, match="'image', which is not a modality"):
        to_bytes(ds)


def test_label_name(multi):
    for i in range(20):
        names = [multi.class_names[k] for k in range(4) if multi.labels[i, k]]
        assert multi.label_name(i) == "+".join(names)
    single = load_synthetic(**SMALL)
    assert single.label_name(3) == single.class_names[int(single.labels[3])]


# ------------------------------------------------------------------------ synthetic


def test_synthetic_label_sets():
    ds = load_synthetic(**SMALL, labels_per_sample=3)
    counts = ds.labels.long().sum(1)
    assert set(counts.tolist()) == {1, 2, 3}  # 1 to k classes each
    single = load_synthetic(**SMALL)
    # every sample keeps the single-label data's class among its classes, so the
    # classes stay balanced and the split is the same
    assert bool(ds.labels[torch.arange(300), single.labels].all())
    assert torch.equal(ds.split, single.split)


def test_synthetic_text_names_every_class_of_the_sample():
    ds = load_synthetic(**{**SMALL, "text_length": 12}, labels_per_sample=3, modalities=("text",))
    text = ds.inputs["text"]
    keyword_class = torch.where((text >= 1) & (text <= KEYWORDS_PER_CLASS * 4),
                                (text - 1) // KEYWORDS_PER_CLASS, torch.tensor(-1))
    for i in range(ds.num_samples):
        shown = set(keyword_class[i][keyword_class[i] >= 0].tolist())
        assert shown == set(torch.nonzero(ds.labels[i]).flatten().tolist()), i


def test_synthetic_tabular_and_audio_carry_each_class():
    ds = load_synthetic(**SMALL, labels_per_sample=2, modalities=("audio", "tabular"),
                        num_classes=3)
    y = ds.labels.float()
    # a linear read-out of the features recovers each class far above chance
    for name in ("audio", "tabular"):
        x = ds.inputs[name].reshape(300, -1)
        x = torch.cat([x, torch.ones(300, 1)], dim=1)
        w = torch.linalg.lstsq(x, y).solution
        predicted = (x @ w) > 0.5
        assert (predicted == (y > 0.5)).float().mean() > 0.85, name


def test_missing_modalities_synthetic():
    full = load_synthetic(**SMALL)
    ds = load_synthetic(**SMALL, missing_rate=0.4)
    lacking = torch.stack([~ds.presence(m) for m in ds.inputs], dim=1)
    assert int(lacking.any(1).sum()) == round(0.4 * 300)
    assert int(lacking.sum(1).max()) == 1  # one modality at most, never all
    assert set(ds.present) == set(ds.inputs)  # with 4 modalities each is missing somewhere
    assert all(lacking[ds.split_indices(s)].any() for s in SPLITS)
    for name, x in ds.inputs.items():
        gone = ~ds.presence(name)
        assert not x[gone].any()  # missing values are zeros
        # samples that have the modality keep exactly what the full dataset has
        assert torch.equal(x[~gone], full.inputs[name][~gone])
    assert torch.equal(ds.labels, full.labels)
    assert ds.provenance["missing_rate"] == 0.4


def test_missing_rate_one_with_two_modalities_leaves_each_sample_one():
    ds = load_synthetic(**SMALL, modalities=("image", "tabular"), missing_rate=1.0)
    assert bool((ds.presence("image") ^ ds.presence("tabular")).all())


@pytest.mark.parametrize(("options", "field"), [
    ({"labels_per_sample": 5}, "labels_per_sample"),
    ({"labels_per_sample": 0}, "labels_per_sample"),
    ({"num_classes": 2, "labels_per_sample": 3}, "labels_per_sample"),
    ({"missing_rate": 1.5}, "missing_rate"),
    ({"missing_rate": -0.1}, "missing_rate"),
    ({"missing_rate": 0.2, "modalities": ["image"]}, "missing_rate"),
])
def test_bad_new_options_name_the_option(options, field):
    with pytest.raises(DataValidationError) as info:
        load_builtin("synthetic", {"num_samples": 200, **options})
    assert info.value.field == f"source.options.{field}"


def test_api_options_schema_rejects_the_same():
    from pydantic import ValidationError

    from app.schemas.datasets import SyntheticOptions

    for options, field in [({"num_classes": 2, "labels_per_sample": 3}, "labels_per_sample"),
                           ({"modalities": ["text"], "missing_rate": 0.1}, "missing_rate"),
                           ({"missing_rate": 1.1}, "missing_rate")]:
        with pytest.raises(ValidationError) as info:
            SyntheticOptions(**options)
        assert info.value.errors()[0]["loc"] == (field,)
    ok = SyntheticOptions(labels_per_sample=2, missing_rate=0.5)
    assert load_builtin("synthetic", {**ok.model_dump(), "num_samples": 200}).multilabel


# ----------------------------------------------------------------------------- npz


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "tags.npz"
    np.savez(path, **arrays)
    return path


def _tags(n: int = 60, k: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tags = (rng.random((n, k)) < 0.4).astype(np.uint8)
    tags[: 2 * k, :] = np.eye(k, dtype=np.uint8).repeat(2, axis=0)  # every class occurs
    return tags


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_, np.float32])
def test_npz_multilabel(tmp_path, dtype):
    tags = _tags()
    ds = prepare_npz(_npz(tmp_path, tabular=np.random.default_rng(1).normal(size=(60, 4)),
                          label=tags.astype(dtype)))
    assert ds.multilabel and ds.labels.dtype == torch.uint8
    assert np.array_equal(ds.labels.numpy(), tags) and ds.class_names == ["0", "1", "2"]
    assert from_bytes(to_bytes(ds)).multilabel


def test_npz_multilabel_class_names_and_empty_rows(tmp_path):
    tags = _tags()
    tags[10] = 0  # a sample with none of the tags is allowed
    ds = prepare_npz(_npz(tmp_path, tabular=np.zeros((60, 2)), label=tags,
                          class_names=np.array(["cat", "dog", "sun"])))
    assert ds.class_names == ["cat", "dog", "sun"] and ds.label_name(10) == "(none)"


@pytest.mark.parametrize(("label", "names", "field", "words"), [
    (np.full((60, 3), 2), None, "label", "in 60 samples: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "
                                         "12, 13, 14, 15, 16, 17, 18, 19, … (first: class 0 "
                                         "is 2)"),
    (np.where(np.eye(60, 3) > 0, 0.5, 0.0), None, "label", "only 0 and 1"),
    (np.full((60, 3), np.nan), None, "label", "only 0 and 1"),
    (np.array([["a", "b", "c"]] * 60), None, "label", "is not 0/1"),
    (np.ones((60, 1)), None, "label", "at least 2 classes"),
    (np.ones((60, 3)), np.array(["a", "b"]), "class_names", "has 2 names but label has 3"),
    (np.ones((60, 3)), np.array(["a", "a", "b"]), "class_names", "distinct"),
    (np.ones((60, 3, 1)), None, "label", "(N, K) of 0/1"),
])
def test_npz_multilabel_errors_name_the_field(tmp_path, label, names, field, words):
    arrays = {"tabular": np.zeros((60, 2)), "label": label}
    if names is not None:
        arrays["class_names"] = names
    with pytest.raises(DataValidationError) as info:
        prepare_npz(_npz(tmp_path, **arrays))
    assert info.value.field == field and words in str(info.value)


def test_npz_multilabel_split_keeps_rare_classes_in_every_split(tmp_path):
    n = 200
    tags = np.zeros((n, 3), dtype=np.uint8)
    tags[:, 0] = 1  # common
    tags[::2, 1] = 1
    tags[:20, 2] = 1  # rare: 10 %
    ds = prepare_npz(_npz(tmp_path, tabular=np.zeros((n, 2)), label=tags))
    for s in SPLITS:
        assert int(ds.labels[ds.split_indices(s), 2].sum()) > 0, s
    assert rarest_class(np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])).tolist() == [1, 3, 0]
