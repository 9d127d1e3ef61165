"""AV-MNIST-style audio-visual digits from real parts (the shape of MultiBench's AV-MNIST).

Each of scikit-learn's 1,797 real 8x8 digit images is paired with a spoken
utterance of the same digit: log-mel features (40 mel bins x 32 frames of
20 ms) of the words "zero".."nine" synthesised with Debian's espeak-ng across
English accents, voice variants, pitches and speeds, with white noise, made
once by ``scripts/make_spoken_digits.py`` and shipped in
``assets/spoken_digits.npz``. Nothing is synthesised or downloaded at run time.

The split is fixed (stratified, seed 0) and so is the partition of the
utterances into train / val / test (per digit, in the same proportions): a
val or test image is paired only with an utterance no training image hears.
``seed`` draws the pairing, the added noise and the label noise.

Harder variants (``occlusion``, ``audio_mask``, with the noise options) take
away part of each modality, seeded per sample, so that neither alone suffices
and fusions can be told apart (``benchmarks/quality_hard.py``).
"""

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.prepared import PreparedDataset
from app.ml.data.splits import flip_train_labels, stratified_split

ASSET = Path(__file__).resolve().parent / "assets" / "spoken_digits.npz"
NOISE_BOUNDS = {"audio_noise": (0.0, 5.0), "image_noise": (0.0, 1.0)}
# share of each image hidden by a square block, share of each utterance's frames masked
MASK_BOUNDS = {"occlusion": (0.0, 0.9), "audio_mask": (0.0, 0.9)}


@lru_cache(maxsize=1)
def load_spoken_digits(path: Path = ASSET) -> dict[str, np.ndarray]:
    """The asset's arrays: ``features`` (N, 40, 32) float16 standardised log-mel,
    ``labels`` (N,) and the generation parameters (``voice``, ``pitch``, ...)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for array in arrays.values():
        array.setflags(write=False)  # shared by every caller through the cache
    return arrays


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N, 8, 8) images (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return pixels, bunch.target.astype(np.int64)


def pair_utterances(labels: np.ndarray, split: np.ndarray, utterance_labels: np.ndarray,
                    seed: int) -> np.ndarray:
    """For each sample, the index of an utterance of its digit, drawn (seeded) from
    the utterances of the sample's split (utterances split per digit, fixed)."""
    utterance_split = stratified_split(utterance_labels, seed=0)
    rng = np.random.default_rng([seed, 1])
    pairs = np.empty(len(labels), dtype=np.int64)
    for part in range(3):
        for digit in np.unique(labels):
            rows = np.flatnonzero((labels == digit) & (split == part))
            pool = np.flatnonzero((utterance_labels == digit) & (utterance_split == part))
            if len(rows) and not len(pool):
                raise ValueError(f"no utterance of digit {digit} for split {part}")
            pairs[rows] = pool[rng.integers(0, len(pool), len(rows))]
    return pairs


def spoken_pairs(labels: np.ndarray, spoken: dict[str, np.ndarray], audio_noise: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits' fixed split (stratified, seed 0) and, per sample, a seeded
    utterance of its digit from its split's own (``pair_utterances``) as
    (N, 1, 40, 32) float32 log-mel, with Gaussian noise of ``audio_noise``
    feature stds."""
    split = stratified_split(labels, seed=0)
    pairs = pair_utterances(labels, split, spoken["labels"].astype(np.int64), seed)
    audio = spoken["features"][pairs].astype(np.float32)[:, None]
    if audio_noise > 0:
        audio += audio_noise * np.random.default_rng([seed, 2]).standard_normal(
            audio.shape, dtype=np.float32)
    return split, audio


def occlusion_side(occlusion: float, size: int) -> int:
    """Side of the square block that hides ``occlusion`` of a size x size image
    (rounded to whole pixels: the share actually hidden is side² / size²)."""
    return round(size * occlusion ** 0.5)


def block_mask(n: int, height: int, width: int, side: int, rng: np.random.Generator
               ) -> np.ndarray:
    """(n, height, width) bool: per sample, a side x side square at a uniformly
    drawn position wholly inside the image."""
    top = rng.integers(0, height - side + 1, n)[:, None, None]
    left = rng.integers(0, width - side + 1, n)[:, None, None]
    rows, cols = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def span_mask(n: int, frames: int, span: int, rng: np.random.Generator) -> np.ndarray:
    """(n, frames) bool: per sample, ``span`` consecutive frames at a drawn start."""
    start = rng.integers(0, frames - span + 1, n)[:, None]
    t = np.arange(frames)[None, :]
    return (t >= start) & (t < start + span)


def check_number(name: str, value: Any, lo: float, hi: float) -> float:
    """A numeric option of the spoken-digit built-ins (this and moving digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise DataValidationError(f"source.options.{name}", f"must be between {lo:g} and {hi:g}")
    return float(value)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1:
        raise DataValidationError("source.options.seed", "must be an integer from 0 to 2^31-1")
    return seed


def load_avmnist(label_noise: float = 0.0, seed: int = 0, audio_noise: float = 0.5,
                 image_noise: float = 0.0, occlusion: float = 0.0,
                 audio_mask: float = 0.0) -> PreparedDataset:
    """Paired digit images ``image`` (N, 1, 8, 8) uint8 and spoken digits ``audio``
    (N, 1, 40, 32) float32, N = 1,797.

    ``audio_noise``: std of Gaussian noise added to the log-mel, in units of the
    features' std; ``image_noise``: std of Gaussian pixel noise as a share of the
    full 0..255 scale; ``label_noise``: share of training labels flipped.
    ``occlusion``: share of each image hidden (set to 0, after the noise) by a
    square block at a seeded random position (``occlusion_side``);
    ``audio_mask``: share of each utterance's 32 frames set to 0 (the features'
    mean, after the noise) in one seeded span. Both apply to every split.
    """
    label_noise = check_number("label_noise", label_noise, 0.0, 0.9)
    audio_noise = check_number("audio_noise", audio_noise, *NOISE_BOUNDS["audio_noise"])
    image_noise = check_number("image_noise", image_noise, *NOISE_BOUNDS["image_noise"])
    seed = check_seed(seed)
    occlusion = check_number("occlusion", occlusion, *MASK_BOUNDS["occlusion"])
    audio_mask = check_number("audio_mask", audio_mask, *MASK_BOUNDS["audio_mask"])

    pixels, labels = digit_images()
    spoken = load_spoken_digits()
    split, audio = spoken_pairs(labels, spoken, audio_noise, seed)
    images = pixels[:, None]
    if image_noise > 0:
        noise = np.random.default_rng([seed, 3]).standard_normal(images.shape,
                                                                 dtype=np.float32)
        images = np.rint(images + noise * (255.0 * image_noise)).clip(0, 255).astype(np.uint8)
    side = occlusion_side(occlusion, images.shape[-1])
    if side:
        hidden = block_mask(len(images), *images.shape[-2:], side,
                            np.random.default_rng([seed, 4]))
        images = np.where(hidden[:, None], np.uint8(0), images)
    span = round(audio_mask * audio.shape[-1])
    if span:
        masked = span_mask(len(audio), audio.shape[-1], span, np.random.default_rng([seed, 5]))
        audio[np.broadcast_to(masked[:, None, None, :], audio.shape)] = 0.0

    noisy = flip_train_labels(labels, split, 10, label_noise, seed)
    voices = [str(v) for v in np.unique(spoken["voice"])]
    provenance: dict[str, Any] = {
        "builtin": "avmnist", "label_noise": label_noise, "seed": seed,
        "audio_noise": audio_noise, "image_noise": image_noise,
        "occlusion": occlusion, "occluded_pixels": side * side,
        "audio_mask": audio_mask, "masked_frames": span,
        "source": "images: scikit-learn load_digits (UCI optical recognition); audio: "
                  "spoken digit words synthesised with espeak-ng by "
                  "scripts/make_spoken_digits.py, shipped as log-mel features",
        "espeak_version": str(spoken["espeak_version"]),
        "accents": sorted({v.split("+")[0] for v in voices}),
        "voice_variants": sorted({v.split("+")[1] for v in voices if "+" in v}),
        "utterances": len(spoken["labels"]),
        "features": str(spoken["params"]),
        "pairing": "each image with a seeded utterance of its digit from its split's "
                   "own utterances (utterances split per digit 70/15/15, fixed)",
    }
    return PreparedDataset(
        inputs={"image": torch.from_numpy(np.ascontiguousarray(images)),
                "audio": torch.from_numpy(np.ascontiguousarray(audio))},
        labels=torch.from_numpy(noisy),
        clean_labels=torch.from_numpy(labels),
        split=torch.from_numpy(split),
        class_names=[str(c) for c in range(10)],
        modality_kinds={"image": "image", "audio": "audio"},
        provenance=provenance,
    )
