"""avmnist's harder variants: ``occlusion`` (a square block hidden per image) and
``audio_mask`` (a span of frames masked per utterance), checked against the same
seed's unoccluded data."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from app.ml.data import load_builtin
from app.ml.data.avmnist import load_avmnist, occlusion_side
from app.ml.data.errors import DataValidationError
from app.schemas.datasets import DatasetCreate

NOISY = {"seed": 4, "image_noise": 0.2, "audio_noise": 1.0}


def _blocks(hard: np.ndarray, clean: np.ndarray, side: int) -> list[tuple[int, int] | None]:
    """Per image, the (top, left) of a side x side square that is all 0 in ``hard``
    while ``hard`` equals ``clean`` everywhere else; None where there is none."""
    n, height, width = hard.shape
    found: list[tuple[int, int] | None] = [None] * n
    for top in range(height - side + 1):
        for left in range(width - side + 1):
            inside = np.zeros((height, width), dtype=bool)
            inside[top:top + side, left:left + side] = True
            ok = ((hard[:, inside] == 0).all(axis=1)
                  & (hard[:, ~inside] == clean[:, ~inside]).all(axis=1))
            for i in np.flatnonzero(ok):
                found[i] = found[i] or (top, left)
    return found


@pytest.mark.parametrize(("occlusion", "side"), [(0.25, 4), (0.5, 6), (0.1, 3)])
def test_occlusion_hides_a_square_block_per_image_after_the_noise(occlusion: float,
                                                                  side: int) -> None:
    assert occlusion_side(occlusion, 8) == side
    clean = load_avmnist(**NOISY).inputs["image"][:, 0].numpy()
    data = load_avmnist(**NOISY, occlusion=occlusion)
    hard = data.inputs["image"]
    assert hard.shape == (1797, 1, 8, 8) and hard.dtype == torch.uint8
    assert data.provenance["occluded_pixels"] == side * side
    blocks = _blocks(hard[:, 0].numpy(), clean, side)
    assert all(b is not None for b in blocks)
    # the share hidden is the block's; positions are drawn per sample
    assert (hard[:, 0].numpy() == 0).mean() >= side * side / 64
    assert len(set(blocks)) == (8 - side + 1) ** 2
    assert torch.equal(data.inputs["audio"], load_avmnist(**NOISY).inputs["audio"])


def test_audio_mask_zeroes_one_span_of_frames_per_utterance() -> None:
    clean = load_avmnist(**NOISY).inputs["audio"][:, 0].numpy()
    data = load_avmnist(**NOISY, audio_mask=0.25)
    hard = data.inputs["audio"]
    assert hard.shape == (1797, 1, 40, 32) and hard.dtype == torch.float32
    assert data.provenance["masked_frames"] == 8
    silent = (hard[:, 0].numpy() == 0).all(axis=1)  # (N, 32): frames zero in every bin
    assert (silent.sum(axis=1) == 8).all()
    starts = silent.argmax(axis=1)
    assert all(silent[i, s:s + 8].all() for i, s in enumerate(starts))
    assert len(set(starts.tolist())) > 20
    kept = np.broadcast_to(~silent[:, None, :], clean.shape)
    assert np.array_equal(hard[:, 0].numpy()[kept], clean[kept])
    assert torch.equal(data.inputs["image"], load_avmnist(**NOISY).inputs["image"])


def test_the_hard_variant_is_seeded() -> None:
    options = {"occlusion": 0.5, "audio_mask": 0.5, **NOISY}
    a, b = load_avmnist(**options), load_avmnist(**options)
    assert all(torch.equal(a.inputs[m], b.inputs[m]) for m in ("image", "audio"))
    c = load_avmnist(**{**options, "seed": 5})
    assert not torch.equal(a.inputs["image"] == 0, c.inputs["image"] == 0)
    assert not torch.equal(a.inputs["audio"] == 0, c.inputs["audio"] == 0)


@pytest.mark.parametrize("option", ["occlusion", "audio_mask"])
@pytest.mark.parametrize("value", [-0.1, 0.95, True, "half"])
def test_bad_values_name_the_option(option: str, value: object) -> None:
    with pytest.raises(DataValidationError) as info:
        load_builtin("avmnist", {option: value})
    assert info.value.field == f"source.options.{option}"
    with pytest.raises(ValidationError) as schema:
        DatasetCreate(name="x", source={"kind": "builtin", "name": "avmnist",
                                        "options": {option: value}})
    locs = [tuple(e["loc"]) for e in schema.value.errors()]
    # StrictModel refuses a boolean for a number on the options object as a whole
    assert ("source", "options", *(() if value is True else (option,))) in locs
