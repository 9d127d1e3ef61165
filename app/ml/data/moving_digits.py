"""Moving digits: short grey clips of a digit moving, each paired with a spoken digit.

Each of scikit-learn's 1,797 real 8x8 digit images is drawn on a black
``side`` x ``side`` canvas at ``frames`` positions along a straight line that
bounces off the canvas's edges (a seeded start and a velocity of up to 2
pixels per frame on each axis, never both zero), and paired with a spoken
utterance of the same digit from AV-MNIST's shipped asset
(``app.ml.data.avmnist``), with the same split logic: the split is fixed
(stratified, seed 0) and a val or test clip is paired only with an utterance
no training clip hears. Nothing is downloaded or synthesised beyond the drawing.
``seed`` draws the trajectories, the pairing, the audio noise and the label noise.
"""

from typing import Any

import numpy as np
import torch

from app.ml.data.avmnist import (
    NOISE_BOUNDS,
    check_number,
    check_seed,
    digit_images,
    load_spoken_digits,
    spoken_pairs,
)
from app.ml.data.errors import DataValidationError
from app.ml.data.prepared import PreparedDataset
from app.ml.data.splits import flip_train_labels

DIGIT_SIDE = 8
MAX_SPEED = 2  # pixels per frame, per axis
FRAME_BOUNDS = (2, 32)
SIDE_BOUNDS = (DIGIT_SIDE, 64)


def bounce(start: np.ndarray, velocity: np.ndarray, frames: int, room: int) -> np.ndarray:
    """Positions (N, frames, 2) of points moving from ``start`` (N, 2) at
    ``velocity`` (N, 2) per frame, reflected at 0 and ``room``."""
    steps = np.arange(frames)[None, :, None]
    if room == 0:
        return np.zeros((len(start), frames, 2), dtype=np.int64)
    raw = np.mod(start[:, None] + velocity[:, None] * steps, 2 * room)
    return np.where(raw <= room, raw, 2 * room - raw).astype(np.int64)


def draw_clips(images: np.ndarray, positions: np.ndarray, side: int) -> np.ndarray:
    """(N, T, 1, side, side) uint8: image i pasted at ``positions[i, t]`` (row, col)
    in frame t, on black."""
    n, t = positions.shape[:2]
    h, w = images.shape[1:]
    clips = np.zeros((n, t, 1, side, side), dtype=np.uint8)
    # one fancy-indexed write for all samples and frames: target pixel coordinates
    rows = positions[..., 0, None, None] + np.arange(h)[None, None, :, None]
    cols = positions[..., 1, None, None] + np.arange(w)[None, None, None, :]
    sample = np.arange(n)[:, None, None, None]
    frame = np.arange(t)[None, :, None, None]
    clips[sample, frame, 0, rows, cols] = images[:, None]
    return clips


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DataValidationError(f"source.options.{name}", f"must be an integer from {lo} "
                                  f"to {hi}")
    return value


def load_moving_digits(label_noise: float = 0.0, seed: int = 0, audio_noise: float = 0.5,
                       frames: int = 8, side: int = 16) -> PreparedDataset:
    """``video`` (N, frames, 1, side, side) uint8 clips and ``audio`` (N, 1, 40, 32)
    float32 log-mel of the same digit, N = 1,797.

    ``audio_noise``: std of Gaussian noise added to the log-mel, in units of the
    features' std; ``label_noise``: share of training labels flipped.
    """
    label_noise = check_number("label_noise", label_noise, 0.0, 0.9)
    audio_noise = check_number("audio_noise", audio_noise, *NOISE_BOUNDS["audio_noise"])
    seed = check_seed(seed)
    frames = _integer("frames", frames, *FRAME_BOUNDS)
    side = _integer("side", side, *SIDE_BOUNDS)

    pixels, labels = digit_images()
    spoken = load_spoken_digits()
    split, audio = spoken_pairs(labels, spoken, audio_noise, seed)

    rng = np.random.default_rng([seed, 4])
    room = side - DIGIT_SIDE
    start = rng.integers(0, room + 1, size=(len(labels), 2))
    velocity = rng.integers(-MAX_SPEED, MAX_SPEED + 1, size=(len(labels), 2))
    still = (velocity == 0).all(axis=1)  # every clip moves: give a still one a step
    velocity[still, rng.integers(0, 2, size=int(still.sum()))] = 1
    clips = draw_clips(pixels, bounce(start, velocity, frames, room), side)

    noisy = flip_train_labels(labels, split, 10, label_noise, seed)
    provenance: dict[str, Any] = {
        "builtin": "moving-digits", "label_noise": label_noise, "seed": seed,
        "audio_noise": audio_noise, "frames": frames, "side": side,
        "source": "video: scikit-learn load_digits (UCI optical recognition) drawn moving "
                  "on a bouncing straight line; audio: spoken digit words synthesised "
                  "with espeak-ng (AV-MNIST's shipped log-mel features)",
        "utterances": len(spoken["labels"]),
        "pairing": "each clip with a seeded utterance of its digit from its split's own "
                   "utterances (utterances split per digit 70/15/15, fixed)",
    }
    return PreparedDataset(
        inputs={"video": torch.from_numpy(clips), "audio": torch.from_numpy(audio)},
        labels=torch.from_numpy(noisy),
        clean_labels=torch.from_numpy(labels),
        split=torch.from_numpy(split),
        class_names=[str(c) for c in range(10)],
        modality_kinds={"video": "video", "audio": "audio"},
        provenance=provenance,
    )
