"""Parquet ingestion: modalities by spec or inferred, multi-label, streaming, precise errors."""

import io
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from app.ml.data import DataValidationError
from app.ml.data.ingest_spec import IngestLimits, IngestSpec, ModalitySpec
from app.ml.data.parquet import (
    BATCH_BYTES,
    batch_rows,
    open_parquet,
    prepare_parquet,
    probe_parquet,
)
from app.ml.data.prepared import from_bytes, to_bytes
from app.schemas.ingest import IngestSpecIn

N = 30


def png(seed: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def wav(seconds: float = 0.05, rate: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * freq * t) * 20000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def columns(n: int = N) -> dict[str, Any]:
    words = ["the cat sat", "a dog ran far", "fish swim"]
    return {
        "img": [png(i) for i in range(n)],
        "caption": [words[i % 3] + f" w{i}" for i in range(n)],
        "sound": [wav(freq=200 + 10 * i) for i in range(n)],
        "age": [float(i) for i in range(n)],
        "city": [["paris", "rome"][i % 2] for i in range(n)],
        "label": [i % 3 for i in range(n)],
        "split": [["train", "train", "train", "validation", "test"][i % 5] for i in range(n)],
    }


def write(tmp_path: Path, cols: dict[str, Any], name: str = "d.parquet", **kw: Any) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(cols), path, **kw)
    return path


SPEC = IngestSpec(modalities={
    "photo": ModalitySpec(kind="image", column="img", size=(8, 6), channels=3),
    "text": ModalitySpec(kind="text", column="caption", max_length=5, vocab_size=8),
    "audio": ModalitySpec(kind="audio", column="sound", clip_seconds=0.1),
    "tabular": ModalitySpec(kind="tabular", columns=("age",), categorical=("city",)),
}, split="split")


def test_spec_prepares_every_modality(tmp_path: Path) -> None:
    ds = prepare_parquet(write(tmp_path, columns(), row_group_size=7), SPEC,
                         IngestLimits(batch_size=4))
    assert ds.modality_kinds == {"photo": "image", "text": "text", "audio": "audio",
                                 "tabular": "tabular"}
    assert ds.inputs["photo"].shape == (N, 3, 8, 6)
    assert str(ds.inputs["photo"].dtype) == "torch.uint8"
    text = ds.inputs["text"]
    assert text.shape == (N, 5) and str(text.dtype) == "torch.int64"
    vocab = ds.provenance["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) == 8
    # train-split words by frequency; w<i> words appear once each, so few make the cut
    assert {"the", "cat", "sat", "a", "dog", "ran"} <= set(vocab) or "fish" in vocab
    assert (text[:, 0] > 0).all()
    audio = ds.inputs["audio"]
    assert audio.shape == (N, 800) and str(audio.dtype) == "torch.float32"
    assert float(audio[0, 500:].abs().max()) == 0.0  # 0.05 s clip zero-padded to 0.1 s
    tab = ds.inputs["tabular"]
    assert tab.shape == (N, 2)
    train = (ds.split == 0).numpy()
    assert abs(float(tab[train, 0].mean())) < 1e-5  # normalised with train statistics
    assert set(tab[:, 1].tolist()) == {1.0, 2.0}
    assert ds.provenance["tabular"]["tabular"]["categorical"] == {"city": ["paris", "rome"]}
    assert ds.class_names == ["0", "1", "2"]
    assert ds.split.tolist() == [[0, 0, 0, 1, 2][i % 5] for i in range(N)]
    again = from_bytes(to_bytes(ds))  # the canonical form round-trips
    assert again.modality_kinds == ds.modality_kinds and again.provenance["vocab"] == vocab


def test_inferred_from_hf_struct_export(tmp_path: Path) -> None:
    cols = columns()
    cols["img"] = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(cols["img"])]
    cols["label"] = [["ant", "bee", "cow"][i % 3] for i in range(N)]
    ds = prepare_parquet(write(tmp_path, cols))
    assert ds.modality_kinds == {"img": "image", "caption": "text", "sound": "audio",
                                 "tabular": "tabular"}
    assert ds.inputs["img"].shape == (N, 3, 32, 32)  # default size, RGB source
    assert ds.inputs["tabular"].shape == (N, 2)  # age + city codes
    assert ds.class_names == ["ant", "bee", "cow"]
    assert ds.summary()["split_sizes"] == {"train": 18, "val": 6, "test": 6}


def test_grayscale_images_keep_one_channel_and_stratified_split(tmp_path: Path) -> None:
    cols = {"image": [png(i, mode="L") for i in range(N)], "label": [i % 2 for i in range(N)]}
    ds = prepare_parquet(write(tmp_path, cols))
    assert ds.inputs["image"].shape == (N, 1, 32, 32)
    assert all(v > 0 for v in ds.summary()["split_sizes"].values())


def test_resamples_when_sample_rate_given(tmp_path: Path) -> None:
    cols = {"a": [wav(0.1, 8000 if i % 2 else 16000) for i in range(N)],
            "label": [i % 2 for i in range(N)]}
    path = write(tmp_path, cols)
    with pytest.raises(DataValidationError, match="inconsistent audio sample rates in 15 rows"):
        prepare_parquet(path)
    spec = IngestSpec(modalities={"audio": ModalitySpec(kind="audio", column="a",
                                                        sample_rate=4000, clip_seconds=0.1)})
    assert prepare_parquet(path, spec).inputs["audio"].shape == (N, 400)


def _fails(tmp_path: Path, cols: dict[str, Any], spec: IngestSpec | None = None,
           limits: IngestLimits | None = None) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        prepare_parquet(write(tmp_path, cols), spec, limits)
    return info.value


def test_unreadable_image_names_the_row(tmp_path: Path) -> None:
    cols = columns()
    cols["img"][17] = b"not a png"
    err = _fails(tmp_path, cols, SPEC)
    assert err.field == "img" and "unreadable image at row 17" in err.reason


def test_missing_labels_listed_together(tmp_path: Path) -> None:
    cols = columns()
    for i in (2, 7, 9):
        cols["label"][i] = None
    err = _fails(tmp_path, cols, SPEC)
    assert err.field == "label" and err.reason.startswith("missing in 3 rows: 2, 7, 9")


def test_error_list_is_capped(tmp_path: Path) -> None:
    cols = columns()
    cols["caption"] = [""] * N
    err = _fails(tmp_path, cols, SPEC, IngestLimits(max_errors=5))
    assert err.field == "caption" and "empty text in" in err.reason and "…" in err.reason


@pytest.mark.parametrize(("mutate", "field", "words"), [
    (lambda c: c.update(caption=[" ", *c["caption"][1:]]), "caption", "empty text at row 0"),
    (lambda c: c.update(sound=[*c["sound"][:4], b"RIFFjunk", *c["sound"][5:]]), "sound",
     "unreadable audio at row 4"),
    (lambda c: c.update(split=["train"] * N), "split", "val split has no samples"),
    (lambda c: c.update(split=["train"] * (N - 1) + ["holdout"]), "split", "unknown split"),
    (lambda c: c.update(label=list(range(N))), "label", "too many classes: 30"),
    (lambda c: c.update(label=[0] * N), "label", "at least 2 classes"),
    (lambda c: c.update(label=[[i % 3] for i in range(N - 1)] + [None]), "label",
     "missing at row 29"),
    (lambda c: c.update(label=[float(i % 3) + 0.5 for i in range(N)]), "label",
     "0.5 at row 0 is not a class"),
    (lambda c: c.update(age=[None, *c["age"][1:]]), "age", "missing or non-finite value at "
                                                           "row 0"),
    (lambda c: c.update(img=["a/b.png"] * N), "img", "holds text"),
    (lambda c: c.update(img=[{"bytes": None, "path": "x.png"}] * N), "img", "no bytes"),
])
def test_data_errors(tmp_path: Path, mutate: Any, field: str, words: str) -> None:
    cols = columns()
    mutate(cols)
    err = _fails(tmp_path, cols, SPEC, IngestLimits(max_classes=20))
    assert err.field == field and words in err.reason, err


def test_spec_and_file_mismatches(tmp_path: Path) -> None:
    spec = IngestSpec(modalities={"image": ModalitySpec(kind="image", column="nope")})
    err = _fails(tmp_path, columns(), spec)
    assert err.field == "nope" and "no such column" in err.reason
    cols = columns()
    del cols["label"]
    assert "no label column" in _fails(tmp_path, cols).reason
    cols = columns()
    cols["label"] = [[0.5, 1.5]] * N
    assert "lists of integers or strings" in _fails(tmp_path, cols).reason


def test_row_cap_and_not_parquet(tmp_path: Path) -> None:
    err = _fails(tmp_path, columns(), limits=IngestLimits(max_rows=10))
    assert err.field == "file" and "parquet: 30 rows is over the limit of 10" in err.reason
    cols = columns()
    err = _fails(tmp_path, cols, limits=IngestLimits(max_columns=len(cols) - 1))
    assert err.field == "file" and f"parquet: {len(cols)} columns is over the limit" in \
        err.reason
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"PAR1 nope")
    with pytest.raises(DataValidationError, match="not a readable Parquet"):
        prepare_parquet(bad)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    cols = columns()
    cols["img"][3] = png(0, size=(300, 300))
    err = _fails(tmp_path, cols, SPEC, IngestLimits(max_image_pixels=50_000))
    assert err.field == "img" and "pixel limit at row 3" in err.reason


def test_stops_reading_after_max_errors(tmp_path: Path) -> None:
    cols = columns(200)
    cols["img"] = [b"bad"] * 200
    spec = IngestSpec(modalities={"image": ModalitySpec(kind="image", column="img")})
    err = _fails(tmp_path, cols, spec, IngestLimits(batch_size=10, max_errors=20))
    assert "in 20 rows" in err.reason  # stopped after the 2nd chunk, not all 200 rows


def test_pydantic_spec_builds_the_dataclass() -> None:
    spec = IngestSpecIn.model_validate({"split": "split", "modalities": {
        "photo": {"kind": "image", "column": "img", "size": [8, 6], "channels": 3},
        "tabular": {"kind": "tabular", "columns": ["age"], "categorical": ["city"]}}})
    out = spec.to_spec()
    assert out.modalities["photo"].size == (8, 6)
    assert out.modalities["tabular"].categorical == ("city",)
    assert IngestSpecIn.model_validate({"multilabel": True}).to_spec().multilabel
    for bad in ({"modalities": {"label": {"kind": "text", "column": "c"}}},
                {"modalities": {"x": {"kind": "video", "column": "c"}}},
                {"modalities": {"x": {"kind": "tabular"}}}, {"extra": 1}):
        with pytest.raises(ValueError):
            IngestSpecIn.model_validate(bad)


def test_flac_audio_via_soundfile(tmp_path: Path) -> None:
    sf = pytest.importorskip("soundfile")
    buf = io.BytesIO()
    sf.write(buf, np.zeros((400, 2), np.float32) + 0.25, 8000, format="FLAC")
    cols = {"a": [buf.getvalue()] * N, "label": [i % 2 for i in range(N)]}
    ds = prepare_parquet(write(tmp_path, cols))
    assert ds.modality_kinds == {"a": "audio"}
    audio = ds.inputs["a"]
    assert audio.shape == (N, 8000) and abs(float(audio[0, 0]) - 0.25) < 1e-3


def _same(a: Any, b: Any) -> None:
    assert a.class_names == b.class_names and a.modality_kinds == b.modality_kinds
    assert a.inputs.keys() == b.inputs.keys()
    for k in a.inputs:
        assert torch.equal(a.inputs[k], b.inputs[k]), k
    assert torch.equal(a.labels, b.labels) and torch.equal(a.split, b.split)
    assert a.provenance["vocab"] == b.provenance["vocab"]
    assert a.provenance["tabular"] == b.provenance["tabular"]


@pytest.mark.parametrize("spec", [SPEC, None])
def test_row_groups_and_batches_do_not_change_the_result(tmp_path: Path,
                                                         spec: IngestSpec | None) -> None:
    cols = columns(60)
    one = prepare_parquet(write(tmp_path, cols, "one.parquet"), spec)
    many = prepare_parquet(write(tmp_path, cols, "many.parquet", row_group_size=7), spec,
                           IngestLimits(batch_size=5))
    assert pq.ParquetFile(tmp_path / "many.parquet").num_row_groups == 9
    _same(one, many)


def test_multilabel_list_column(tmp_path: Path) -> None:
    tags = [["cat"], ["dog", "cat"], [], ["bird", "dog"]]
    cols = {"img": [png(i) for i in range(N)],
            "label": [tags[i % 4] for i in range(N)]}
    ds = prepare_parquet(write(tmp_path, cols))
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.labels.dtype == torch.uint8 and ds.labels.shape == (N, 3)
    expected = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.uint8)
    assert torch.equal(ds.labels, expected.repeat(N // 4 + 1, 1)[:N])
    assert torch.equal(ds.clean_labels, ds.labels)
    assert all((ds.split == s).any() for s in range(3))  # stratified by rarest label
    assert ds.provenance["multilabel"] is True


def test_multilabel_text_with_separator_and_integer_lists(tmp_path: Path) -> None:
    cols = {"img": [png(i) for i in range(N)],
            "label": [["a|b", "b", "c|a"][i % 3] for i in range(N)]}
    path = write(tmp_path, cols)
    single = prepare_parquet(path)  # without multilabel, "a|b" is one class
    assert single.class_names == ["a|b", "b", "c|a"] and single.labels.dim() == 1
    ds = prepare_parquet(path, IngestSpec(multilabel=True))
    assert ds.class_names == ["a", "b", "c"]
    assert ds.labels[:3].tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    ints = prepare_parquet(write(tmp_path, {"img": cols["img"],
                                            "label": [[10, 9], [2]] * (N // 2)}, "i.parquet"))
    assert ints.class_names == ["2", "9", "10"]  # integers sort as numbers
    assert ints.labels[:2].tolist() == [[0, 1, 1], [1, 0, 0]]


def test_integer_strings_are_classes_in_numeric_order(tmp_path: Path) -> None:
    cols = {"img": [png(i) for i in range(N)], "label": [["10", "9", "2"][i % 3]
                                                          for i in range(N)]}
    ds = prepare_parquet(write(tmp_path, cols))
    assert ds.class_names == ["2", "9", "10"]
    assert ds.labels[:3].tolist() == [2, 1, 0]


def test_probe_reads_the_footer_not_the_data(tmp_path: Path) -> None:
    cols = columns()
    cols["img"] = [b"not an image"] * N  # found only when the images are decoded
    path = write(tmp_path, cols)
    assert probe_parquet(path, SPEC).modalities["photo"].column == "img"
    with pytest.raises(DataValidationError, match="unreadable image"):
        prepare_parquet(path, SPEC)
    inferred = probe_parquet(write(tmp_path, columns(), "ok.parquet"))
    assert {m.kind for m in inferred.modalities.values()} == {"image", "text", "audio",
                                                               "tabular"}
    assert inferred.split == "split"
    with pytest.raises(DataValidationError, match="no such column"):
        probe_parquet(path, IngestSpec(modalities={"x": ModalitySpec(kind="text",
                                                                     column="nope")}))
    big = IngestSpec(modalities={"x": ModalitySpec(kind="image", column="img",
                                                   size=(600, 600))})
    with pytest.raises(DataValidationError, match="each side must be 1 to 512"):
        probe_parquet(path, big)


def test_large_rows_make_smaller_batches(tmp_path: Path) -> None:
    limits = IngestLimits(batch_size=1024)
    small = open_parquet(write(tmp_path, {"x": list(range(100)), "label": [0] * 100},
                               "s.parquet"), limits)
    assert batch_rows(small, ["x", "label"], limits) == 1024
    blob = b"\x01" * (BATCH_BYTES // 8)
    big = open_parquet(write(tmp_path, {"x": [blob] * 20, "label": [0] * 20}, "b.parquet",
                             use_dictionary=False), limits)
    assert 4 <= batch_rows(big, ["x", "label"], limits) <= 8


_MEMORY_PROBE = """
import sys
import pyarrow as pa
from pathlib import Path
from app.ml.data.ingest_spec import IngestLimits
from app.ml.data.parquet import prepare_parquet
ds = prepare_parquet(Path(sys.argv[1]), limits=IngestLimits(batch_size=32))
print(pa.default_memory_pool().max_memory(), ds.inputs["img"].shape[0])
"""


def test_reading_streams_within_a_row_group(tmp_path: Path) -> None:
    """One row group of ~10 MB of images read 32 rows at a time: Arrow holds a few
    pages and a batch, never the whole column chunk."""
    import subprocess
    import sys

    n = 800
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    path = write(tmp_path, {"img": images, "label": [i % 2 for i in range(n)]},
                 row_group_size=n, use_dictionary=False, data_page_size=256 * 1024,
                 write_batch_size=16)
    size = path.stat().st_size
    assert pq.ParquetFile(path).num_row_groups == 1 and size > 8 * 1024**2
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path)], check=True,
                          capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    peak, rows = (int(x) for x in done.stdout.split())
    assert rows == n
    assert peak < size / 3, f"Arrow peaked at {peak} bytes for a {size}-byte file"
