"""Archive ingestion: manifests, image folders, and every unsafe-archive refusal."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.ml.data import DataValidationError
from app.ml.data.archive import prepare_archive, probe_archive
from app.ml.data.ingest_spec import IngestLimits, IngestSpec, ModalitySpec
from tests.unit.test_parquet import png, wav

N = 24


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def manifest_rows(n: int = N) -> list[dict[str, object]]:
    return [{"image": f"imgs/{i}.png", "audio": f"snd/{i}.wav", "text": f"word{i % 4} and more",
             "label": ["cat", "dog"][i % 2], "split": ["train", "train", "val", "test"][i % 4]}
            for i in range(n)]


def media(n: int = N) -> dict[str, bytes]:
    files = {f"imgs/{i}.png": png(i) for i in range(n)}
    files.update({f"snd/{i}.wav": wav() for i in range(n)})
    return files


def as_csv(rows: list[dict[str, object]]) -> bytes:
    head = list(rows[0])
    return ("\n".join([",".join(head)] + [",".join(str(r[h]) for h in head) for r in rows])
            + "\n").encode()


def as_jsonl(rows: list[dict[str, object]]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@pytest.mark.parametrize("kind", ["zip-csv", "tar-jsonl", "zip-jsonl-in-folder"])
def test_manifest_archives(tmp_path: Path, kind: str) -> None:
    files = media()
    if kind == "zip-csv":
        path = make_zip(tmp_path / "d.zip", {"manifest.csv": as_csv(manifest_rows()), **files})
    elif kind == "tar-jsonl":
        path = make_tar(tmp_path / "d.tar.gz",
                        {"manifest.jsonl": as_jsonl(manifest_rows()), **files})
    else:
        path = make_zip(tmp_path / "d.zip", {f"top/{k}": v for k, v in
                                             {"manifest.jsonl": as_jsonl(manifest_rows()),
                                              **files}.items()})
    ds = prepare_archive(path)
    assert ds.modality_kinds == {"image": "image", "audio": "audio", "text": "text"}
    assert ds.inputs["image"].shape == (N, 3, 32, 32)
    assert ds.inputs["audio"].shape == (N, 8000)
    assert ds.inputs["text"].shape == (N, 32)
    assert ds.class_names == ["cat", "dog"]
    assert ds.summary()["split_sizes"] == {"train": 12, "val": 6, "test": 6}


def test_manifest_with_spec_and_features(tmp_path: Path) -> None:
    rows = [{"pic": f"{i}.png", "age": i, "town": "ab"[i % 2], "y": i % 3} for i in range(30)]
    path = make_zip(tmp_path / "d.zip", {"manifest.jsonl": as_jsonl(rows),
                                         **{f"{i}.png": png(i) for i in range(30)}})
    spec = IngestSpec(label="y", modalities={
        "image": ModalitySpec(kind="image", column="pic", size=(4, 4), channels=1),
        "tabular": ModalitySpec(kind="tabular", columns=("age",), categorical=("town",))})
    ds = prepare_archive(path, spec)
    assert ds.inputs["image"].shape == (30, 1, 4, 4) and ds.inputs["tabular"].shape == (30, 2)
    inferred = prepare_archive(path, IngestSpec(label="y"))
    assert inferred.modality_kinds == {"pic": "image", "tabular": "tabular"}


def test_image_folder_layouts(tmp_path: Path) -> None:
    files = {f"pets/{c}/{i}.png": png(i) for c in ("cat", "dog") for i in range(12)}
    files["pets/.DS_Store"] = b"junk"
    ds = prepare_archive(make_zip(tmp_path / "d.zip", files))
    assert ds.class_names == ["cat", "dog"] and ds.inputs["image"].shape == (24, 3, 32, 32)
    split_files = {f"{s}/{c}/{i}.png": png(i, mode="L")
                   for s in ("train", "val", "test") for c in ("a", "b") for i in range(2)}
    ds = prepare_archive(make_tar(tmp_path / "s.tgz", split_files))
    assert ds.summary()["split_sizes"] == {"train": 4, "val": 4, "test": 4}
    assert ds.inputs["image"].shape[1] == 1


def test_folder_errors(tmp_path: Path) -> None:
    bad = {f"{c}/{i}.png": png(i) for c in ("cat", "dog") for i in range(12)}
    bad["dog/5.png"] = b"broken"
    with pytest.raises(DataValidationError, match=r"unreadable image at file dog/5\.png"):
        prepare_archive(make_zip(tmp_path / "a.zip", bad))
    with pytest.raises(DataValidationError, match="layout"):
        prepare_archive(make_zip(tmp_path / "b.zip", {"loose.png": png(0)}))


def test_missing_file_and_label_in_manifest(tmp_path: Path) -> None:
    rows = manifest_rows()
    rows[2]["image"] = "imgs/a.png"
    rows[5]["label"] = ""
    path = make_zip(tmp_path / "d.zip", {"manifest.csv": as_csv(rows), **media()})
    with pytest.raises(DataValidationError) as info:
        prepare_archive(path)
    assert "missing file imgs/a.png at manifest row 3" in str(info.value)
    assert "label: missing at manifest row 6" in str(info.value)
    rows = manifest_rows()
    rows[0]["image"] = "../../etc/passwd"
    path = make_zip(tmp_path / "e.zip", {"manifest.csv": as_csv(rows), **media()})
    with pytest.raises(DataValidationError, match="path leaves the archive at manifest row 1"):
        prepare_archive(path)
    path = make_zip(tmp_path / "f.zip", {"manifest.jsonl": b"{not json", **media()})
    with pytest.raises(DataValidationError, match="line 1: not valid JSON"):
        prepare_archive(path)


def test_path_traversal_and_absolute_names(tmp_path: Path) -> None:
    for i, name in enumerate(["../x.png", "a/../../x.png", "/etc/x.png", "C:/x.png"]):
        for maker, suffix in ((make_zip, "zip"), (make_tar, "tar.gz")):
            path = maker(tmp_path / f"{i}.{suffix}", {"cat/1.png": png(1), name: png(0)})
            with pytest.raises(DataValidationError, match=r"traversal|absolute"):
                prepare_archive(path)


def test_links_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        link = tarfile.TarInfo("cat/evil.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataValidationError, match="links are not allowed"):
        prepare_archive(path)
    zpath = tmp_path / "l.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        info = zipfile.ZipInfo("cat/evil.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataValidationError, match="symlinks"):
        prepare_archive(zpath)


def test_zip_bomb_and_caps(tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "b.zip", {"cat/big.png": b"\0" * (2 * 1024**2), "dog/1.png":
                                         png(1)})
    with pytest.raises(DataValidationError, match="zip bomb"):
        prepare_archive(bomb)
    tbomb = make_tar(tmp_path / "b.tar.gz", {"cat/big.png": b"\0" * (2 * 1024**2)})
    with pytest.raises(DataValidationError, match="zip bomb"):
        prepare_archive(tbomb)
    many = {f"cat/{i}.png": b"x" for i in range(11)}
    for maker, suffix in ((make_zip, "zip"), (make_tar, "tgz")):
        path = maker(tmp_path / f"m.{suffix}", many)
        with pytest.raises(DataValidationError, match="more than 10 files"):
            prepare_archive(path, limits=IngestLimits(max_files=10))
    with pytest.raises(DataValidationError, match="unpacks to more than 5 bytes"):
        prepare_archive(make_zip(tmp_path / "t.zip", many), limits=IngestLimits(
            max_total_bytes=5))
    not_archive = tmp_path / "n.zip"
    not_archive.write_bytes(b"hello")
    with pytest.raises(DataValidationError, match=r"not a \.zip or \.tar\.gz"):
        prepare_archive(not_archive)


def test_multilabel_manifests(tmp_path: Path) -> None:
    tags = [["cat"], ["cat", "dog"], [], ["dog"]]
    rows = [{"image": f"imgs/{i}.png", "labels": tags[i % 4]} for i in range(N)]
    zipped = make_zip(tmp_path / "j.zip", {"manifest.jsonl": as_jsonl(rows), **media()})
    ds = prepare_archive(zipped, IngestSpec(label="labels"))  # JSON lists: multi-label
    assert ds.class_names == ["cat", "dog"] and ds.labels.shape == (N, 2)
    assert ds.labels[:4].tolist() == [[1, 0], [1, 1], [0, 0], [0, 1]]
    csv_rows = [{"image": r["image"], "labels": "|".join(r["labels"]) or "cat"}
                for r in rows]
    path = make_zip(tmp_path / "c.zip", {"manifest.csv": as_csv(csv_rows), **media()})
    ds = prepare_archive(path, IngestSpec(label="labels", multilabel=True))
    assert ds.labels[:4].tolist() == [[1, 0], [1, 1], [1, 0], [0, 1]]
    plain = prepare_archive(path, IngestSpec(label="labels"))  # "cat|dog" is one class
    assert plain.class_names == ["cat", "cat|dog", "dog"]


def test_probe_reads_the_directory_and_manifest_only(tmp_path: Path) -> None:
    rows = manifest_rows()
    files = media()
    files["imgs/3.png"] = b"broken"  # found only when the image is decoded
    path = make_zip(tmp_path / "d.zip", {"manifest.csv": as_csv(rows), **files})
    spec = probe_archive(path)
    assert spec is not None and spec.modalities["image"].column == "image"
    with pytest.raises(DataValidationError, match="unreadable image at manifest row 4"):
        prepare_archive(path)
    rows[2]["image"] = "imgs/a.png"
    rows[4]["audio"] = "../../x.wav"
    path = make_zip(tmp_path / "e.zip", {"manifest.csv": as_csv(rows), **media()})
    with pytest.raises(DataValidationError) as info:
        probe_archive(path)
    assert "missing file imgs/a.png at manifest row 3" in str(info.value)
    assert "audio: path leaves the archive at manifest row 5" in str(info.value)
    for bad, words in (({"../x.png": b"1"}, "traversal"), ({"loose.png": png(0)}, "layout"),
                       ({"manifest.csv": b"image,y\na.png,1\n", "a.png": png(0)},
                        "no label column")):
        with pytest.raises(DataValidationError, match=words):
            probe_archive(make_zip(tmp_path / "bad.zip", bad))


def test_probe_of_a_tar_checks_its_header_only(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "t.tar.gz", {"loose.png": png(0)})  # a bad layout...
    assert probe_archive(tar) is None  # ...that only the full read finds
    with pytest.raises(DataValidationError, match="layout"):
        prepare_archive(tar)
    garbage = tmp_path / "g.tgz"
    garbage.write_bytes(b"\x1f\x8b nope")
    with pytest.raises(DataValidationError, match=r"not a \.zip or \.tar\.gz"):
        probe_archive(garbage)


def test_progress_reports_unpacking_and_reading(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "d.tar.gz", {"manifest.jsonl": as_jsonl(manifest_rows()),
                                            **media()})
    seen: list[tuple[str, float]] = []
    prepare_archive(path, limits=IngestLimits(batch_size=5),
                    progress=lambda stage, done: seen.append((stage, done)))
    stages = [s for s, _ in seen]
    assert stages[0] == "unpacking" and stages[-1] == "finishing"
    reading = [d for s, d in seen if s == "reading"]
    assert len(reading) == 5 and reading == sorted(reading) and reading[-1] == 1.0
