"""The synthetic multimodal built-in, and multimodal .npz ingestion."""

from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.data import (
    DataValidationError,
    PreparedDataset,
    from_bytes,
    load_builtin,
    prepare_npz,
    to_bytes,
)
from app.ml.data.issues import DataIssues
from app.ml.data.synthetic import KEYWORDS_PER_CLASS, load_synthetic, pseudo_word


@pytest.fixture(scope="module")
def synth() -> PreparedDataset:
    return load_synthetic()


def test_shapes_dtypes_and_kinds(synth):
    assert synth.num_samples == 1200 and synth.num_classes == 4
    assert synth.modality_kinds == {"image": "image", "text": "text", "audio": "audio",
                                    "tabular": "tabular"}
    image, text = synth.inputs["image"], synth.inputs["text"]
    audio, tabular = synth.inputs["audio"], synth.inputs["tabular"]
    assert image.shape == (1200, 3, 16, 16) and image.dtype == torch.uint8
    assert text.shape == (1200, 12) and text.dtype == torch.int64
    assert audio.shape == (1200, 1, 32, 32) and audio.dtype == torch.float32
    assert tabular.shape == (1200, 8) and tabular.dtype == torch.float32
    assert torch.isfinite(audio).all() and torch.isfinite(tabular).all()
    assert synth.labels.dtype == torch.int64
    assert torch.bincount(synth.labels).tolist() == [300] * 4
    assert torch.equal(synth.labels, synth.clean_labels)
    sizes = synth.summary()["split_sizes"]
    assert sizes == {"train": 840, "val": 180, "test": 180}


def test_options_change_the_shapes():
    ds = load_synthetic(num_samples=300, num_classes=3, modalities=("audio", "image"),
                        image_size=8, audio_bins=12, audio_frames=20)
    assert list(ds.inputs) == ["image", "audio"]  # a fixed order, whatever was asked
    assert ds.inputs["image"].shape == (300, 3, 8, 8)
    assert ds.inputs["audio"].shape == (300, 1, 12, 20)
    assert "vocab" not in ds.provenance


def test_text_is_right_padded_ids_with_a_vocabulary(synth):
    text = synth.inputs["text"]
    vocab = synth.provenance["vocab"]
    assert len(vocab) == 64 and vocab[0] == "<pad>" and len(set(vocab)) == 64
    assert int(text.min()) == 0 and int(text.max()) <= 63
    pad = text == 0
    # once padded, always padded; every row has tokens, and lengths vary
    assert not (~pad[:, 1:] & pad[:, :-1]).any()
    lengths = (~pad).sum(dim=1)
    assert int(lengths.min()) >= 3 and len(lengths.unique()) > 3
    # at signal 1, every row holds a keyword of its class
    first = 1 + synth.labels[:, None] * KEYWORDS_PER_CLASS
    has_kw = ((text >= first) & (text < first + KEYWORDS_PER_CLASS)).any(dim=1)
    assert has_kw.all()
    keywords = synth.provenance["keywords"]
    assert keywords["class0"] == vocab[1:1 + KEYWORDS_PER_CLASS]


def test_pseudo_words_are_unique():
    words = [pseudo_word(i) for i in range(50_000)]
    assert len(set(words)) == len(words) and all(len(w) >= 4 for w in words)


def test_same_seed_same_data_other_seed_other_data(synth):
    again = load_synthetic()
    other = load_synthetic(seed=1)
    for name in synth.inputs:
        assert torch.equal(synth.inputs[name], again.inputs[name])
        assert not torch.equal(synth.inputs[name], other.inputs[name])
    assert torch.equal(synth.labels, again.labels) and torch.equal(synth.split, again.split)
    assert not torch.equal(synth.labels, other.labels)


def test_each_modality_has_its_own_stream(synth):
    alone = load_synthetic(modalities=("tabular",))
    assert list(alone.inputs) == ["tabular"]
    assert torch.equal(alone.inputs["tabular"], synth.inputs["tabular"])
    weaker = load_synthetic(signal={"image": 0.2})
    assert not torch.equal(weaker.inputs["image"], synth.inputs["image"])
    for name in ("text", "audio", "tabular"):
        assert torch.equal(weaker.inputs[name], synth.inputs[name])


def _features(ds: PreparedDataset, modality: str) -> torch.Tensor:
    x = ds.inputs[modality]
    if modality == "image":
        return x.float().mean(dim=(2, 3))  # mean colour
    if modality == "audio":
        return x[:, 0].mean(dim=2)  # energy per frequency bin
    if modality == "text":  # bag of words
        counts = torch.zeros(x.shape[0], int(x.max()) + 1)
        counts.scatter_add_(1, x, torch.ones_like(x, dtype=torch.float32))
        return counts[:, 1:]
    return x


def nearest_mean_accuracy(ds: PreparedDataset, modality: str) -> float:
    feats = _features(ds, modality)
    train, test = ds.split_indices("train"), ds.split_indices("test")
    means = torch.stack([feats[train][ds.labels[train] == k].mean(dim=0)
                         for k in range(ds.num_classes)])
    predicted = torch.cdist(feats[test], means).argmin(dim=1)
    return float((predicted == ds.labels[test]).float().mean())


@pytest.mark.parametrize("modality", ["image", "text", "audio", "tabular"])
def test_class_signal_follows_the_signal_option(modality):
    strong = load_synthetic(signal={modality: 1.0}, modalities=(modality,))
    none = load_synthetic(signal={modality: 0.0}, modalities=(modality,))
    assert nearest_mean_accuracy(strong, modality) > 0.75  # chance is 0.25
    assert nearest_mean_accuracy(none, modality) < 0.40


@pytest.mark.parametrize(("options", "field"), [
    ({"num_samples": 5}, "num_samples"),
    ({"num_samples": 10**6}, "num_samples"),
    ({"num_classes": 1}, "num_classes"),
    ({"num_samples": 100, "num_classes": 20}, "num_samples"),
    ({"modalities": ()}, "modalities"),
    ({"modalities": ("image", "smell")}, "modalities"),
    ({"modalities": ("image", "image")}, "modalities"),
    ({"signal": {"image": 1.5}}, "signal"),
    ({"signal": {"smell": 0.5}}, "signal"),
    ({"signal": 0.5}, "signal"),
    ({"num_classes": 30, "vocab_size": 20}, "vocab_size"),
    ({"image_size": 4}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"num_samples": 100_000, "image_size": 64, "audio_bins": 128, "audio_frames": 256},
     "num_samples"),
    ({"label_noise": 0.2}, "label_noise"),
])
def test_bad_options_name_the_option(options, field):
    with pytest.raises(DataValidationError) as info:
        load_builtin("synthetic", options)
    assert info.value.field == f"source.options.{field}"


def test_load_builtin_synthetic_and_round_trip():
    ds = load_builtin("synthetic", {"num_samples": 200, "num_classes": 2, "seed": 3,
                                    "signal": {"text": 0.5}})
    assert ds.provenance["builtin"] == "synthetic" and ds.provenance["signal"]["text"] == 0.5
    back = from_bytes(to_bytes(ds))
    # safetensors stores tensors sorted by name; the modalities keep their order
    assert list(back.inputs) == list(ds.inputs) == ["image", "text", "audio", "tabular"]
    for name in ds.inputs:
        assert torch.equal(back.inputs[name], ds.inputs[name])
    assert back.modality_kinds == ds.modality_kinds
    assert back.provenance == ds.provenance
    summary = ds.summary()
    # the summary gives the vocabulary's size, not its words
    assert "vocab" not in summary["provenance"] and summary["provenance"]["vocab_size"] == 64
    text = next(m for m in summary["modalities"] if m["name"] == "text")
    assert text == {"name": "text", "kind": "text", "shape": [12], "dtype": "int64",
                    "vocab_size": 64}


# ------------------------------------------------------------- multimodal npz


def _save(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "multi.npz"
    np.savez(path, **arrays)
    return path


def _arrays(ds: PreparedDataset) -> dict[str, np.ndarray]:
    arrays = {m: t.numpy() for m, t in ds.inputs.items()}
    arrays["label"] = ds.labels.numpy()
    return arrays


def test_synthetic_arrays_survive_an_npz_round_trip(synth, tmp_path):
    arrays = _arrays(synth)
    arrays["vocab"] = np.array(synth.provenance["vocab"])
    ds = prepare_npz(_save(tmp_path, **arrays))
    assert list(ds.inputs) == ["image", "text", "audio", "tabular"]
    assert ds.modality_kinds == {m: m for m in ds.inputs}
    for name in synth.inputs:
        assert torch.equal(ds.inputs[name], synth.inputs[name]), name
    assert ds.provenance["vocab"] == synth.provenance["vocab"]
    assert ds.class_names == ["0", "1", "2", "3"]


def test_npz_without_image(tmp_path):
    rng = np.random.default_rng(0)
    text = rng.integers(1, 30, (60, 7))
    text[::2, 5:] = 0
    ds = prepare_npz(_save(tmp_path, text=text.astype(np.int32),
                           tabular=rng.normal(size=(60, 3)), label=np.arange(60) % 3))
    assert list(ds.inputs) == ["text", "tabular"]
    assert ds.inputs["text"].dtype == torch.int64 and ds.inputs["tabular"].dtype == torch.float32
    assert "vocab" not in ds.provenance


@pytest.mark.parametrize("shape", [(60, 400), (60, 16, 20), (60, 2, 16, 20)])
def test_npz_audio_shapes(tmp_path, shape):
    audio = np.random.default_rng(0).normal(size=shape)
    ds = prepare_npz(_save(tmp_path, audio=audio, label=np.arange(60) % 3))
    assert ds.inputs["audio"].shape == shape and ds.inputs["audio"].dtype == torch.float32
    assert ds.modality_kinds == {"audio": "audio"}


def _field(tmp_path: Path, **arrays: np.ndarray) -> tuple[str, str]:
    with pytest.raises(DataValidationError) as info:
        prepare_npz(_save(tmp_path, **arrays))
    return info.value.field, info.value.reason


LABELS = np.arange(60) % 3
TEXT = np.tile(np.arange(1, 6), (60, 1))


@pytest.mark.parametrize(("arrays", "field", "words"), [
    ({"label": LABELS}, "image", "at least one modality"),
    ({"text": TEXT.astype(np.float32), "label": LABELS}, "text", "not integer"),
    ({"text": -TEXT, "label": LABELS}, "text",
     "negative token ids (ids are >= 0 with 0 = padding) in 60 samples: 0, 1,"),
    ({"text": np.array([[1, 0, 2]] * 60), "label": LABELS}, "text", "follows padding"),
    ({"text": TEXT[:, 0], "label": LABELS}, "text", "(N, T)"),
    ({"text": TEXT, "vocab": np.array(["<pad>", "a", "b"]), "label": LABELS}, "text",
     "outside the vocab"),
    ({"text": TEXT, "vocab": np.arange(9), "label": LABELS}, "vocab", "strings"),
    ({"tabular": np.ones((60, 2)), "vocab": np.array(["a", "b"]), "label": LABELS}, "vocab",
     "without a text array"),
    ({"tabular": np.ones(60), "label": LABELS}, "tabular", "(N, D)"),
    ({"tabular": np.full((60, 2), np.nan), "label": LABELS}, "tabular", "NaN"),
    ({"tabular": np.full((60, 2), "x"), "label": LABELS}, "tabular", "not numeric"),
    ({"audio": np.ones((60, 1, 2, 3, 4)), "label": LABELS}, "audio", "waveform"),
    ({"audio": np.ones((60, 9, 4, 4)), "label": LABELS}, "audio", "channels"),
    ({"audio": np.full((60, 8), np.inf), "label": LABELS}, "audio", "NaN"),
    ({"image": np.zeros((60, 4, 4), np.uint8), "text": TEXT[:59], "label": LABELS}, "text",
     "59 samples but image has 60"),
    ({"tabular": np.ones((60, 2)), "label": LABELS[:59]}, "label",
     "59 entries but tabular has 60"),
])
def test_npz_modality_rejections(tmp_path, arrays, field, words):
    got_field, reason = _field(tmp_path, **arrays)
    assert got_field == field and words in reason, reason


def test_npz_value_problems_list_every_bad_sample_as_tables_list_rows(tmp_path):
    """NaNs (and misplaced token ids) are listed like a Parquet file's bad rows:
    every problem of every array, the first 20 samples each, all of them counted."""
    image = np.zeros((60, 4, 4), np.float32)
    image[[3, 7, 41]] = np.nan
    tabular = np.zeros((60, 2))
    tabular[::2, 1] = np.inf  # 30 samples: listed up to 20, all counted
    text = TEXT.copy()
    text[[5, 9], 1] = 0  # a pad, then tokens after it
    with pytest.raises(DataIssues) as info:
        prepare_npz(_save(tmp_path, image=image, text=text, tabular=tabular, label=LABELS))
    assert info.value.entries == [
        ("image", "contains NaN or infinity in 3 samples: 3, 7, 41"),
        ("text", "a token follows padding (rows must be right-padded with 0) in 2 samples: "
                 "5, 9"),
        ("tabular", "contains NaN or infinity in 30 samples: "
                    + ", ".join(str(i) for i in range(0, 40, 2)) + ", …")]
    assert info.value.total == 35  # error_count of the failed dataset
