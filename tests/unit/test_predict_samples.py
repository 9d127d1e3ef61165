"""Files read for prediction: the dataset readers without labels or splits, and a
table file encoded exactly as the model's training dataset was."""

import json
import zipfile
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from app.ml.data import DataValidationError, NpzLimits
from app.ml.data.archive import prepare_archive, read_archive_samples
from app.ml.data.ingest_spec import IngestLimits, IngestSpec
from app.ml.data.npz import read_npz_samples
from app.ml.data.npz_header import probe_npz
from app.ml.data.parquet import prepare_parquet, read_parquet_samples
from app.ml.data.prepared import PreparedDataset
from app.ml.data.samples import Encoding, apply_encoding, fit_spec, spec_from_provenance
from app.schemas.ingest import IngestSpecIn
from tests.unit.test_parquet import SPEC, columns, png


def _fit(ds: PreparedDataset) -> partial:  # type: ignore[type-arg]
    return partial(fit_spec, shapes={m: tuple(x.shape[1:]) for m, x in ds.inputs.items()},
                   multilabel=ds.multilabel, max_vocab=IngestLimits().max_vocab)


@pytest.mark.parametrize("spec", [SPEC, None], ids=["given spec", "inferred"])
def test_parquet_rows_are_encoded_as_in_training(tmp_path: Path,
                                                 spec: IngestSpec | None) -> None:
    cols = columns()
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table(cols), train)
    ds = prepare_parquet(train, spec)
    rows = ds.split_indices("test").tolist() + ds.split_indices("train").tolist()[:4]
    # the rows again, in another order, without label or split: as a user would send them
    sent = {k: [v[i] for i in rows] for k, v in cols.items() if k not in ("label", "split")}
    path = tmp_path / "predict.parquet"
    pq.write_table(pa.table(sent), path)

    read_spec = spec_from_provenance(ds.provenance, asdict(spec) if spec else None)
    samples = read_parquet_samples(path, read_spec, _fit(ds))
    assert samples.labels is None and samples.num_samples == len(rows)
    encoded = apply_encoding(samples, Encoding.of(ds.class_names, ds.provenance))
    assert set(encoded.inputs) == set(ds.inputs)
    for m, x in ds.inputs.items():
        assert encoded.inputs[m].dtype == x.dtype, m
        assert torch.equal(encoded.inputs[m], x[rows]), m


def test_parquet_labels_are_optional_per_row(tmp_path: Path) -> None:
    cols = columns()
    ds = prepare_parquet(_write(tmp_path / "train.parquet", cols), SPEC)
    sent = {k: v[:4] for k, v in cols.items()}
    sent["label"] = [2, None, 0, 2]
    samples = read_parquet_samples(_write(tmp_path / "p.parquet", sent),
                                   spec_from_provenance(ds.provenance, asdict(SPEC)), _fit(ds))
    assert samples.labels == ["2", None, "0", "2"]


def test_table_columns_that_differ_from_training_are_named(tmp_path: Path) -> None:
    cols = columns()
    ds = prepare_parquet(_write(tmp_path / "train.parquet", cols))
    sent = {"img": cols["img"][:3], "caption": cols["caption"][:3], "sound": cols["sound"][:3],
            "height": [1.0, 2.0, 3.0], "city": cols["city"][:3]}
    samples = read_parquet_samples(_write(tmp_path / "p.parquet", sent), None, _fit(ds))
    with pytest.raises(DataValidationError) as err:
        apply_encoding(samples, Encoding.of(ds.class_names, ds.provenance))
    assert err.value.field == "tabular" and "age" in err.value.reason


def test_text_needs_a_training_vocabulary(tmp_path: Path) -> None:
    cols = columns()
    ds = prepare_parquet(_write(tmp_path / "train.parquet", cols), SPEC)
    samples = read_parquet_samples(_write(tmp_path / "p.parquet", {"caption": ["a b"]}),
                                   None, _fit(ds))
    with pytest.raises(DataValidationError, match="no vocabulary"):
        apply_encoding(samples, Encoding(class_names=ds.class_names))


def _write(path: Path, cols: dict) -> Path:  # type: ignore[type-arg]
    pq.write_table(pa.table(cols), path)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_without_labels_or_splits(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (5, 1, 8, 8), dtype=np.uint8)
    path = _npz(tmp_path / "x.npz", image=images)
    probe_npz(path, labelled=False)
    with pytest.raises(DataValidationError, match="missing array"):
        probe_npz(path)
    samples = read_npz_samples(path)
    assert samples.labels is None and samples.kinds == {"image": "image"}
    assert torch.equal(samples.inputs["image"], torch.from_numpy(images))


def test_npz_labels_are_named_as_ingestion_names_them(tmp_path: Path) -> None:
    images = np.zeros((3, 8, 8), np.uint8)
    assert read_npz_samples(_npz(tmp_path / "a.npz", image=images, label=np.array([7, 3, 7]),
                                 split=np.array([0, 0, 0]))).labels == ["7", "3", "7"]
    assert read_npz_samples(_npz(tmp_path / "b.npz", image=images, label=np.array([1, 0, 1]),
                                 class_names=np.array(["cat", "dog"]))).labels == [
        "dog", "cat", "dog"]
    tags = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.uint8)
    assert read_npz_samples(_npz(tmp_path / "c.npz", image=images, label=tags)).labels == [
        ["0", "2"], [], ["1"]]
    with pytest.raises(DataValidationError) as err:
        read_npz_samples(_npz(tmp_path / "d.npz", image=images, label=np.ones(4, np.int64)))
    assert err.value.field == "label"
    with pytest.raises(DataValidationError, match="over the limit of 2"):
        read_npz_samples(_npz(tmp_path / "e.npz", image=images), NpzLimits(max_samples=2))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_archive_of_plain_files_or_class_folders(tmp_path: Path) -> None:
    fit = partial(fit_spec, shapes={"image": (3, 6, 5)}, multilabel=False, max_vocab=100)
    flat = _zip(tmp_path / "flat.zip", {f"imgs/{i}.png": png(i) for i in range(3)})
    samples = read_archive_samples(flat, None, fit)
    assert samples.labels is None and samples.inputs["image"].shape == (3, 3, 6, 5)
    folders = _zip(tmp_path / "folders.zip",
                   {"cat/a.png": png(0), "dog/b.png": png(1), "cat/c.png": png(2)})
    samples = read_archive_samples(folders, None, fit)
    assert samples.labels == ["cat", "cat", "dog"]  # files in path order
    mixed = _zip(tmp_path / "mixed.zip", {"a.png": png(0), "dog/b.png": png(1)})
    with pytest.raises(DataValidationError, match="layout"):
        read_archive_samples(mixed, None, fit)
    with pytest.raises(DataValidationError, match="over the limit of 2"):
        read_archive_samples(flat, None, fit, IngestLimits(max_rows=2))


def test_npz_task_labels_are_read_per_task(tmp_path: Path) -> None:
    images = np.zeros((3, 8, 8), np.uint8)
    samples = read_npz_samples(_npz(tmp_path / "t.npz", image=images,
                                    **{"label.colour": np.array(["r", "g", "r"]),
                                       "label.size": np.array([1, 1, 1])}))
    # one class is enough for samples sent to a model; the first task is ``labels``
    assert samples.task_labels == {"colour": ["r", "g", "r"], "size": ["1", "1", "1"]}
    assert samples.labels == ["r", "g", "r"]
    assert read_npz_samples(_npz(tmp_path / "u.npz", image=images)).task_labels is None
    with pytest.raises(DataValidationError) as err:
        read_npz_samples(_npz(tmp_path / "v.npz", image=images,
                              **{"label.size": np.array([1, 0])}))
    assert err.value.field == "label.size"


def _manifest(path: Path, rows: dict[str, list]) -> Path:  # type: ignore[type-arg]
    n = len(next(iter(rows.values())))
    lines = [json.dumps({k: v[i] for k, v in rows.items()}) for i in range(n)]
    return _zip(path, {"manifest.jsonl": "\n".join(lines).encode()})


@pytest.mark.parametrize("fmt", ["parquet", "manifest"])
def test_table_task_columns_are_read_per_task_with_gaps(tmp_path: Path, fmt: str) -> None:
    spec = IngestSpecIn.model_validate({"tasks": {"colour": "colour", "size": "size"}}).to_spec()
    n = 30
    table = {"f1": [float(i) for i in range(n)], "colour": ["r", "g", "b"] * (n // 3),
             "size": [i % 2 for i in range(n)]}
    sent = {"f1": [1.0, 2.0, 3.0], "colour": ["g", None, "b"], "size": [1, 0, None]}
    if fmt == "parquet":
        ds = prepare_parquet(_write(tmp_path / "train.parquet", table), spec)
        read_spec = spec_from_provenance(ds.provenance, asdict(spec))
        samples = read_parquet_samples(_write(tmp_path / "p.parquet", sent), read_spec,
                                       _fit(ds))
    else:
        ds = prepare_archive(_manifest(tmp_path / "train.zip", table), spec)
        read_spec = spec_from_provenance(ds.provenance, asdict(spec))
        samples = read_archive_samples(_manifest(tmp_path / "p.zip", sent), read_spec, _fit(ds))
    assert samples.task_labels == {"colour": ["g", None, "b"], "size": ["1", "0", None]}
    assert samples.labels == ["g", None, "b"]
    encoded = apply_encoding(samples, Encoding.of(ds.class_names, ds.provenance))
    assert encoded.task_labels == samples.task_labels
    # without the tasks' columns the rows have no labels at all
    unlabelled = {"f1": [1.0, 2.0]}
    if fmt == "parquet":
        bare = read_parquet_samples(_write(tmp_path / "q.parquet", unlabelled), read_spec,
                                    _fit(ds))
    else:
        bare = read_archive_samples(_manifest(tmp_path / "q.zip", unlabelled), read_spec,
                                    _fit(ds))
    assert bare.labels is None and bare.task_labels is None
