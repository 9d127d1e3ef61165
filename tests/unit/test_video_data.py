"""Video ingestion (npz arrays, zips of frame folders) and the moving-digits built-in."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.data import DataValidationError, NpzLimits, load_builtin, prepare_npz
from app.ml.data.archive import prepare_archive, probe_archive
from app.ml.data.avmnist import load_spoken_digits, pair_utterances
from app.ml.data.frames import frame_order
from app.ml.data.ingest_spec import IngestLimits
from app.ml.data.moving_digits import bounce, load_moving_digits
from app.ml.data.npz_header import probe_npz
from app.ml.data.splits import stratified_split
from app.schemas.datasets import DatasetCreate

# ---- npz ------------------------------------------------------------------------------


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _clips(n: int = 30, t: int = 4, c: int | None = 1, side: int = 6,
           dtype: type = np.uint8) -> np.ndarray:
    shape = (n, t, side, side) if c is None else (n, t, c, side, side)
    return np.random.default_rng(0).integers(0, 256, shape).astype(dtype)


def test_npz_video_is_a_video_modality(tmp_path: Path) -> None:
    clips = _clips(c=3)
    path = _npz(tmp_path / "v.npz", video=clips, label=np.arange(30) % 3)
    probe_npz(path)
    ds = prepare_npz(path)
    assert ds.modality_kinds == {"video": "video"}
    assert torch.equal(ds.inputs["video"], torch.from_numpy(clips))
    summary = ds.summary()["modalities"]
    assert summary == [{"name": "video", "kind": "video", "shape": [4, 3, 6, 6],
                        "dtype": "uint8"}]


def test_npz_video_grey_without_channel_axis_and_float(tmp_path: Path) -> None:
    grey = _clips(c=None)
    ds = prepare_npz(_npz(tmp_path / "g.npz", video=grey, label=np.arange(30) % 3))
    assert ds.inputs["video"].shape == (30, 4, 1, 6, 6)
    floats = grey.astype(np.float32) / 255
    ds = prepare_npz(_npz(tmp_path / "f.npz", video=floats, label=np.arange(30) % 3,
                          audio=np.zeros((30, 100), np.float32)))
    assert ds.inputs["video"].dtype == torch.float32
    assert ds.modality_kinds == {"audio": "audio", "video": "video"}


@pytest.mark.parametrize(("video", "limits", "reason"), [
    (_clips()[:, 0, 0], NpzLimits(), "expected shape (N, T, H, W) or (N, T, C, H, W)"),
    (_clips(t=9), NpzLimits(max_frames=8), "9 frames per clip; expected 1 to 8"),
    (_clips(c=5), NpzLimits(), "5 channels; expected 1 to 4 in axis 2"),
    (_clips(side=20), NpzLimits(max_side=16), "20x20 pixels per frame"),
    (np.array(["a"] * 30 * 4 * 36).reshape(30, 4, 6, 6), NpzLimits(), "is not numeric"),
])
def test_npz_video_shape_errors_name_the_field(tmp_path: Path, video: np.ndarray,
                                               limits: NpzLimits, reason: str) -> None:
    path = _npz(tmp_path / "bad.npz", video=video, label=np.arange(30) % 3)
    for check in (lambda: probe_npz(path, limits), lambda: prepare_npz(path, limits)):
        with pytest.raises(DataValidationError) as info:
            check()
        assert info.value.field == "video"
        assert reason in str(info.value)


def test_npz_video_nan_lists_the_samples(tmp_path: Path) -> None:
    clips = _clips().astype(np.float32)
    clips[[3, 17], 2, 0, 1, 1] = np.nan
    with pytest.raises(DataValidationError) as info:
        prepare_npz(_npz(tmp_path / "nan.npz", video=clips, label=np.arange(30) % 3))
    assert info.value.field == "video"
    assert "NaN" in str(info.value) and "3" in str(info.value) and "17" in str(info.value)


def test_npz_video_and_audio_sample_counts_must_agree(tmp_path: Path) -> None:
    path = _npz(tmp_path / "n.npz", video=_clips(), audio=np.zeros((29, 50), np.float32),
                label=np.arange(30) % 3)
    with pytest.raises(DataValidationError) as info:
        prepare_npz(path)
    assert info.value.field == "video" and "has 30 samples but audio has 29" in str(info.value)


# ---- the moving-digits built-in ----------------------------------------------------


def test_bounce_reflects_at_the_walls() -> None:
    path = bounce(np.array([[0, 7]]), np.array([[2, 1]]), 6, room=8)[0]
    assert path[:, 0].tolist() == [0, 2, 4, 6, 8, 6]  # rows bounce off the bottom
    assert path[:, 1].tolist() == [7, 8, 7, 6, 5, 4]  # columns off the right


def test_moving_digits_shapes_labels_split() -> None:
    ds = load_builtin("moving-digits", {"frames": 6, "side": 20})
    video, audio = ds.inputs["video"], ds.inputs["audio"]
    assert video.shape == (1797, 6, 1, 20, 20) and video.dtype == torch.uint8
    assert audio.shape == (1797, 1, 40, 32) and audio.dtype == torch.float32
    assert ds.modality_kinds == {"video": "video", "audio": "audio"}
    assert ds.summary()["split_sizes"] == {"train": 1259, "val": 269, "test": 269}
    from sklearn.datasets import load_digits

    sk = load_digits()
    assert np.array_equal(ds.clean_labels.numpy(), sk.target)
    pixels = np.rint(sk.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for i in (0, 500, 1796):
        for t in range(6):
            frame = video[i, t, 0].numpy()
            # the frame is the sample's own digit pasted somewhere on black
            hits = [(r, c) for r in range(13) for c in range(13)
                    if np.array_equal(frame[r:r + 8, c:c + 8], pixels[i])]
            assert hits, (i, t)
            assert frame.sum() == pixels[i].sum()  # nothing else is drawn
        # it moves: not every frame is the same
        assert any(not torch.equal(video[i, 0], video[i, t]) for t in range(1, 6))


def test_moving_digits_audio_is_its_digit_and_unseen_outside_train() -> None:
    ds = load_moving_digits(seed=3, audio_noise=0.0)
    labels, split = ds.clean_labels.numpy(), ds.split.numpy()
    spoken = load_spoken_digits()
    pairs = pair_utterances(labels, split, spoken["labels"].astype(np.int64), 3)
    assert np.array_equal(spoken["labels"][pairs], labels)
    assert np.array_equal(ds.inputs["audio"][:, 0].numpy(),
                          spoken["features"][pairs].astype(np.float32))
    utterance_split = stratified_split(spoken["labels"].astype(np.int64), seed=0)
    assert np.array_equal(utterance_split[pairs], split)
    train_heard = set(pairs[split == 0].tolist())
    assert not train_heard & set(pairs[split != 0].tolist())


def test_moving_digits_is_seeded() -> None:
    a, b, c = (load_moving_digits(seed=s) for s in (1, 1, 2))
    assert torch.equal(a.inputs["video"], b.inputs["video"])
    assert torch.equal(a.inputs["audio"], b.inputs["audio"])
    assert not torch.equal(a.inputs["video"], c.inputs["video"])
    assert torch.equal(a.split, c.split)


@pytest.mark.parametrize(("options", "field"), [
    ({"frames": 1}, "source.options.frames"),
    ({"side": 7}, "source.options.side"),
    ({"audio_noise": -1}, "source.options.audio_noise"),
    ({"image_noise": 0.1}, "source.options.image_noise"),
])
def test_moving_digits_bad_options(options: dict, field: str) -> None:
    with pytest.raises(DataValidationError) as info:
        load_builtin("moving-digits", options)
    assert info.value.field == field


def test_moving_digits_schema() -> None:
    body = DatasetCreate.model_validate(
        {"name": "clips", "source": {"kind": "builtin", "name": "moving-digits",
                                     "options": {"frames": 4}}})
    assert body.source.options.frames == 4  # type: ignore[union-attr]
    assert body.source.options.side == 16  # type: ignore[union-attr]


# ---- zips of frame folders -----------------------------------------------------------


def _png(value: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def _clip_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _clips_members(classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 10,
                   frames: int = 3, prefix: str = "") -> dict[str, bytes]:
    members = {}
    for k, cls in enumerate(classes):
        for c in range(per_class):
            for t in range(frames):
                # every frame differs: its value encodes class, clip and frame
                members[f"{prefix}{cls}/clip{c}/frame{t}.png"] = _png(100 * k + 10 * t + c)
    return members


def test_frame_folder_zip_is_a_video_dataset_with_frames_in_order(tmp_path: Path) -> None:
    members = _clips_members(frames=3)
    # frames named so that plain string order would be wrong (f10 < f2): a fourth clip
    # length would break the layout, so rename one class's frames 2, 10, 100
    for c in range(10):
        for t, name in enumerate(("f2", "f10", "f100")):
            members[f"dog/clip{c}/{name}.png"] = members.pop(f"dog/clip{c}/frame{t}.png")
    path = _clip_zip(tmp_path / "clips.zip", dict(reversed(list(members.items()))))
    assert probe_archive(path) is None
    ds = prepare_archive(path, original_name="clips.zip")
    assert ds.modality_kinds == {"video": "video"} and ds.class_names == ["cat", "dog"]
    video = ds.inputs["video"]
    assert video.shape == (20, 3, 1, 5, 6) and video.dtype == torch.uint8
    assert ds.summary()["modalities"][0]["shape"] == [3, 1, 5, 6]
    for row in range(20):
        k = int(ds.labels[row])
        values = [int(video[row, t, 0, 0, 0]) for t in range(3)]
        # one clip's frames in order: 10 apart, starting at its class's hundred
        assert values[1] - values[0] == values[2] - values[1] == 10, values
        assert values[0] // 100 == k
    assert sorted(int(video[r, 0, 0, 0, 0]) % 10 for r in range(20)) == sorted(
        list(range(10)) * 2)  # every clip once
    assert ds.provenance["layout"] == "clip folders"
    assert sum(ds.summary()["split_sizes"].values()) == 20


def test_frame_folder_zip_with_split_folders_and_colour(tmp_path: Path) -> None:
    members = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for cls in ("a", "b"):
            for c in range(n):
                for t in range(2):
                    members[f"top/{split}/{cls}/{c}/{t}.png"] = _png(50 * t, mode="RGB")
    ds = prepare_archive(_clip_zip(tmp_path / "s.zip", members))
    assert ds.inputs["video"].shape == (16, 2, 3, 5, 6)
    assert ds.summary()["split_sizes"] == {"train": 8, "val": 4, "test": 4}


def test_frame_sizes_that_differ_name_the_file(tmp_path: Path) -> None:
    members = _clips_members()
    members["dog/clip4/frame1.png"] = _png(7, size=(8, 8))
    with pytest.raises(DataValidationError) as info:
        prepare_archive(_clip_zip(tmp_path / "sizes.zip", members))
    assert info.value.field == "video"
    assert "frames must all be 6x5 pixels" in str(info.value)
    assert "dog/clip4/frame1.png is 8x8" in str(info.value)


def test_clips_with_other_frame_counts_unreadable_frames_are_listed(tmp_path: Path) -> None:
    members = _clips_members()
    del members["cat/clip3/frame2.png"]
    members["dog/clip7/frame0.png"] = b"not a png"
    with pytest.raises(DataValidationError) as info:
        prepare_archive(_clip_zip(tmp_path / "bad.zip", members))
    text = str(info.value)
    assert info.value.field == "video"
    assert "clips must all have 3 frames" in text and "cat/clip3 has 2" in text
    assert "unreadable frame at clip dog/clip7" in text and "dog/clip7/frame0.png" in text


def test_clip_limits(tmp_path: Path) -> None:
    path = _clip_zip(tmp_path / "c.zip", _clips_members(frames=3))
    with pytest.raises(DataValidationError, match="has 3 frames, over the limit of 2"):
        prepare_archive(path, limits=IngestLimits(max_frames=2))
    with pytest.raises(DataValidationError, match="each side of a frame must be at most 4"):
        prepare_archive(path, limits=IngestLimits(max_side=4))
    with pytest.raises(DataValidationError, match="frame over the pixel limit"):
        prepare_archive(path, limits=IngestLimits(max_image_pixels=20))
    members = _clips_members()
    members["dog/clip1/notes.txt"] = b"x"
    with pytest.raises(DataValidationError, match=r"'dog/clip1/notes\.txt' is not an image"):
        prepare_archive(_clip_zip(tmp_path / "t.zip", members))


def test_frame_order_compares_numbers_as_numbers() -> None:
    names = ["c/f10.png", "c/f2.png", "c/f1.png", "c/f100.png"]
    assert sorted(names, key=frame_order) == ["c/f1.png", "c/f2.png", "c/f10.png",
                                              "c/f100.png"]


def test_image_folders_are_still_images(tmp_path: Path) -> None:
    members = {f"train/{c}/{i}.png": _png(i) for c in "ab" for i in range(4)}
    members.update({f"{s}/{c}/{i}.png": _png(i) for s in ("val", "test") for c in "ab"
                    for i in range(2)})
    ds = prepare_archive(_clip_zip(tmp_path / "img.zip", members))
    assert ds.modality_kinds == {"image": "image"}


def test_manifest_names_clip_folders_labels_and_splits(tmp_path: Path) -> None:
    members = {}
    lines = ["video,label,split"]
    for c in range(12):
        split = ("train", "train", "val", "test")[c % 4]
        for t, name in enumerate(("f1", "f2", "f10")):  # numeric order, not string order
            members[f"data/raw/{c}/{name}.png"] = _png(20 * t + c)
        lines.append(f"raw/{c},{'odd' if c % 2 else 'even'},{split}")
    members["data/manifest.csv"] = "\n".join(lines).encode()
    path = _clip_zip(tmp_path / "m.zip", members)
    assert probe_archive(path) is None
    ds = prepare_archive(path)
    video = ds.inputs["video"]
    assert video.shape == (12, 3, 1, 5, 6)
    assert ds.class_names == ["even", "odd"]
    for row in range(12):  # manifest order; frames f1, f2, f10
        assert [int(video[row, t, 0, 0, 0]) for t in range(3)] == [row, 20 + row, 40 + row]
        assert int(ds.labels[row]) == row % 2
    assert ds.split.tolist() == [0, 0, 1, 2] * 3
    assert ds.provenance["layout"] == "manifest"


@pytest.mark.parametrize(("row", "reason"), [
    ("raw/99,even", "manifest row 1: no frames in 'raw/99'"),
    ("../x,even", "manifest row 1: '../x' is not a clip folder inside the archive"),
])
def test_manifest_clip_errors_name_the_row(tmp_path: Path, row: str, reason: str) -> None:
    members = {"raw/0/0.png": _png(1), "manifest.csv": f"video,label\n{row}\n".encode()}
    path = _clip_zip(tmp_path / "m.zip", members)
    for check in (probe_archive, prepare_archive):
        with pytest.raises(DataValidationError) as info:
            check(path)
        assert info.value.field == "video" and reason in str(info.value)
