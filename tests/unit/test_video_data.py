"""Video ingestion (npz arrays, zips of frame folders) and the moving-digits built-in."""

from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.data import DataValidationError, NpzLimits, load_builtin, prepare_npz
from app.ml.data.avmnist import load_spoken_digits, pair_utterances
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
