"""A seeded synthetic multimodal classification dataset.

Every sample has a class and, per modality, a *shown* class: the sample's own
class with probability ``signal[modality]``, otherwise a class drawn uniformly
(tabular uses its signal as the scale of the class means instead). So at
signal 1 each modality alone identifies the class (up to its noise), at 0 it
carries nothing, and modalities with partial signal are independent evidence.

With ``labels_per_sample`` k > 1 the data is multi-label: each sample has 1 to
k distinct classes (count uniform; the first class is balanced over the
dataset, as single-label classes are) and labels are multi-hot (N, K) uint8.
Every modality then shows each of the sample's classes (each one subject to
the signal as above): several shapes in the image, keywords of each class in
the text, one band per class in the audio, the sum of the class means in the
tabular features. The split is stratified by the first class.

With ``tasks`` k > 1 the data is multi-task: k label columns, each a function
of the sample's one class c, so a representation of c serves them all. Task
``class`` is c itself (the primary task); task ``group<t>`` (t = 1 … k-1) puts
the classes into max(2, K // 2) groups by a seeded permutation of its own:
label = perm_t(c) mod groups. The modalities show c only, as above.

With ``missing_rate`` r > 0, round(r·N) samples (chosen at random, in every
split) lack one of their modalities, drawn uniformly; the dataset's
``present.<modality>`` masks say which, and the missing values are zeros.

- ``image`` (N, 3, S, S) uint8: a coloured shape (shape and colour by class) at
  a random place and size, on noise.
- ``text`` (N, T) int64: token ids 1..V-1, right-padded with 0, of random
  length; one to three keywords of the class among filler words. The
  vocabulary (index → word, 0 = ``<pad>``) is ``provenance["vocab"]``.
- ``audio`` (N, 1, F, T) float32: a log-mel-like spectrogram, spectral tilt and
  noise plus a class-dependent frequency band that sounds for part of the clip.
- ``tabular`` (N, D) float32: class means (scaled by the signal) plus unit
  Gaussian noise.

Each modality has its own random stream, so a modality's arrays for a seed do
not change when other modalities are added or removed. Everything is
vectorised (no per-sample Python loops).
"""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.prepared import PreparedDataset
from app.ml.data.splits import stratified_split

MODALITIES: tuple[str, ...] = ("image", "text", "audio", "tabular")
KEYWORDS_PER_CLASS = 2
MAX_BYTES = 512 * 1024**2

# option -> (min, max), inclusive
BOUNDS: dict[str, tuple[int, int]] = {
    "num_samples": (100, 100_000),
    "num_classes": (2, 50),
    "seed": (0, 2**31 - 1),
    "image_size": (8, 64),
    "text_length": (4, 256),
    "vocab_size": (16, 50_000),
    "audio_bins": (8, 128),
    "audio_frames": (8, 256),
    "tabular_features": (1, 512),
    "labels_per_sample": (1, 4),
    "tasks": (1, 8),
}

_SYLLABLES = ("ba", "ko", "mi", "du", "re", "sa", "ti", "lo", "ne", "pu",
              "ga", "ve", "zo", "hi", "fa", "ru", "ke", "no", "wi", "ja")
_SHAPES = 8
_PALETTE = np.array([(230, 60, 50), (60, 170, 70), (60, 100, 230), (240, 200, 40),
                     (170, 70, 200), (40, 200, 210), (250, 140, 30), (240, 240, 240)],
                    dtype=np.float32)


def pseudo_word(i: int) -> str:
    """A pronounceable, unique word for every i >= 0 (two syllables or more)."""
    n, base = i + len(_SYLLABLES), len(_SYLLABLES)
    parts: list[int] = []
    while n:
        n, r = divmod(n, base)
        # each syllable offset by the previous one: still one word per i, less repetitive
        parts.append(r if not parts else (r + 7 * parts[-1] + 3) % base)
    return "".join(_SYLLABLES[p] for p in parts)


def _fail(name: str, reason: str) -> DataValidationError:
    return DataValidationError(f"source.options.{name}", reason)


def array_bytes(num_samples: int, modalities: Iterable[str], sizes: Mapping[str, int]) -> int:
    """Bytes the generated arrays take (the options' sizes by name)."""
    per_sample = {"image": 3 * sizes["image_size"] ** 2,
                  "text": 8 * sizes["text_length"],
                  "audio": 4 * sizes["audio_bins"] * sizes["audio_frames"],
                  "tabular": 4 * sizes["tabular_features"]}
    return num_samples * sum(per_sample[m] for m in modalities)


def _check_options(num_samples: int, num_classes: int, seed: int,
                   modalities: tuple[str, ...], signal: dict[str, float],
                   sizes: dict[str, int], labels_per_sample: int = 1,
                   missing_rate: float = 0.0, tasks: int = 1) -> None:
    for name, value in {"num_samples": num_samples, "num_classes": num_classes,
                        "seed": seed, "labels_per_sample": labels_per_sample,
                        "tasks": tasks, **sizes}.items():
        lo, hi = BOUNDS[name]
        if isinstance(value, bool) or not isinstance(value, int | np.integer) \
                or not lo <= value <= hi:
            raise _fail(name, f"must be an integer from {lo} to {hi}")
    if not modalities:
        raise _fail("modalities", "needs at least one of " + ", ".join(MODALITIES))
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise _fail("modalities", f"unknown modality {unknown[0]!r}; known: "
                    + ", ".join(MODALITIES))
    if len(set(modalities)) != len(modalities):
        raise _fail("modalities", "lists a modality twice")
    for name, value in signal.items():
        if name not in MODALITIES:
            raise _fail("signal", f"unknown modality {name!r}; known: " + ", ".join(MODALITIES))
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) \
                or not 0.0 <= value <= 1.0:
            raise _fail("signal", f"{name}: must be a number from 0 to 1")
    if tasks > 1 and labels_per_sample > 1:
        raise _fail("tasks", "multi-task labels are one class per sample per task; use "
                    "labels_per_sample 1")
    if labels_per_sample > num_classes:
        raise _fail("labels_per_sample", f"must be at most num_classes ({num_classes})")
    if isinstance(missing_rate, bool) or not isinstance(missing_rate, int | float | np.number) \
            or not 0.0 <= missing_rate <= 1.0:
        raise _fail("missing_rate", "must be a number from 0 to 1")
    if missing_rate > 0 and len(modalities) < 2:
        raise _fail("missing_rate", "needs at least two modalities (a sample never lacks "
                    "all of them)")
    if num_samples < 10 * num_classes:
        raise _fail("num_samples", f"needs at least 10 samples per class "
                    f"({10 * num_classes} for {num_classes} classes)")
    if "text" in modalities and sizes["vocab_size"] < KEYWORDS_PER_CLASS * num_classes + 5:
        raise _fail("vocab_size", f"must be at least {KEYWORDS_PER_CLASS * num_classes + 5} "
                    f"for {num_classes} classes (keywords plus filler words)")
    total = array_bytes(num_samples, modalities, sizes)
    if total > MAX_BYTES:
        raise _fail("num_samples", f"these options make {total} bytes of arrays, over the "
                    f"limit of {MAX_BYTES}; use fewer samples or smaller modalities")


def _shown_class(classes: np.ndarray, num_classes: int, signal: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The classes a modality shows, (N, S) like ``classes``: each the sample's
    with probability ``signal``, else uniform."""
    keep = rng.random(classes.shape) < signal
    return np.where(keep, classes, rng.integers(0, num_classes, classes.shape))


def _shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    ady, adx = np.abs(dy), np.abs(dx)
    if shape == 0:  # disc
        return dy**2 + dx**2 <= r**2
    if shape == 1:  # square
        return np.maximum(ady, adx) <= r * 0.85
    if shape == 2:  # ring
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (r * 0.55) ** 2)
    if shape == 3:  # plus
        return ((ady <= r * 0.3) & (adx <= r)) | ((adx <= r * 0.3) & (ady <= r))
    if shape == 4:  # diamond
        return ady + adx <= r
    if shape == 5:  # triangle, apex up
        return (dy >= -r) & (dy <= r) & (adx <= (dy + r) / 2)
    if shape == 6:  # horizontal bar
        return (ady <= r * 0.35) & (adx <= r)
    return (adx <= r * 0.35) & (ady <= r)  # vertical bar


def _image(shown: np.ndarray, valid: np.ndarray, size: int,
           rng: np.random.Generator) -> np.ndarray:
    """One coloured shape per shown class (slot); later slots paint over earlier ones."""
    n, slots = shown.shape
    shape = shown % _SHAPES
    colour = (shown + shown // _SHAPES) % len(_PALETTE)
    radius = size * rng.uniform(0.22, 0.34, (n, slots))
    if slots > 1:  # several shapes share the canvas
        radius *= 0.7
    cy = rng.uniform(radius, size - radius)
    cx = rng.uniform(radius, size - radius)
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    tint = (_PALETTE[colour] + rng.normal(0.0, 12.0, (n, slots, 3))).astype(np.float32)
    background = rng.random((n, 3, size, size), dtype=np.float32) * 70.0
    grain = rng.standard_normal((n, 3, size, size), dtype=np.float32) * 10.0
    pixels = background
    for slot in range(slots):
        dy = yy[None] - cy[:, slot, None, None]
        dx = xx[None] - cx[:, slot, None, None]
        r = radius[:, slot, None, None]
        mask = np.zeros((n, size, size), dtype=bool)
        for k in range(_SHAPES):  # one vectorised pass per shape, not per sample
            rows = np.flatnonzero((shape[:, slot] == k) & valid[:, slot])
            if len(rows):
                mask[rows] = _shape_mask(k, dy[rows], dx[rows], r[rows])
        pixels = np.where(mask[:, None], tint[:, slot, :, None, None] + grain, pixels)
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return pixels.astype(np.uint8)


def _text(shown: np.ndarray, valid: np.ndarray, num_classes: int, length: int,
          vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Keywords of the shown classes (each at least once, in turn) among filler words."""
    n = len(shown)
    first_filler = 1 + KEYWORDS_PER_CLASS * num_classes
    ids = rng.integers(first_filler, vocab_size, (n, length))
    lengths = rng.integers(max(3, length // 2), length + 1, n)
    pos = np.arange(length)[None]
    # one to three keyword positions per row, distinct, inside the row's length
    keys = np.where(pos < lengths[:, None], rng.random((n, length)), np.inf)
    order = np.argsort(keys, axis=1)
    n_classes = valid.sum(axis=1)
    n_keywords = np.minimum(np.maximum(rng.integers(1, 4, n), n_classes), lengths)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(pos, order.shape), axis=1)
    # the r-th keyword of a row names its (r mod count)-th class; valid slots come first
    keyword_class = np.take_along_axis(shown, rank % n_classes[:, None], axis=1)
    keywords = 1 + keyword_class * KEYWORDS_PER_CLASS \
        + rng.integers(0, KEYWORDS_PER_CLASS, (n, length))
    ids = np.where(rank < n_keywords[:, None], keywords, ids)
    return np.where(pos < lengths[:, None], ids, 0).astype(np.int64)


def _audio(shown: np.ndarray, valid: np.ndarray, num_classes: int, bins: int, frames: int,
           rng: np.random.Generator) -> np.ndarray:
    """One frequency band per shown class, all sounding over the same stretch."""
    n = len(shown)
    f = np.arange(bins, dtype=np.float32)
    t = np.arange(frames, dtype=np.float32)
    tilt = (-2.0 - 3.0 * f / bins).astype(np.float32)  # less energy up high, in log units
    spec = tilt[None, :, None] + 0.5 * rng.standard_normal((n, bins, frames),
                                                            dtype=np.float32)
    centre = (shown + 0.5) * bins / num_classes
    width = max(bins / (3.0 * num_classes), 0.75)
    bands = np.exp(-0.5 * ((f[None, None] - centre[:, :, None]) / width) ** 2)  # (n, S, F)
    band = (bands * valid[:, :, None]).sum(axis=1)
    onset = rng.uniform(0.0, frames / 3.0, n)
    duration = rng.uniform(frames / 2.0, frames, n)
    gate = ((t[None] >= onset[:, None]) & (t[None] < onset[:, None] + duration[:, None]))
    level = rng.uniform(2.5, 3.5, n)
    spec += (level[:, None] * band).astype(np.float32)[:, :, None] * gate[:, None, :]
    return spec[:, None]


def _tabular(classes: np.ndarray, valid: np.ndarray, num_classes: int, features: int,
             signal: float, rng: np.random.Generator) -> np.ndarray:
    """The sum of the sample's class means, scaled by the signal, plus unit noise."""
    means = rng.normal(0.0, 1.0, (num_classes, features))
    noise = rng.normal(0.0, 1.0, (len(classes), features))
    centre = (means[classes] * valid[:, :, None]).sum(axis=1)
    return (signal * centre + noise).astype(np.float32)


def _label_sets(primary: np.ndarray, num_classes: int, per_sample: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, per_sample) classes, the first one ``primary``, the rest distinct
    others, and which of them a sample has: 1 to ``per_sample``, uniformly."""
    n = len(primary)
    if per_sample == 1:
        return primary[:, None], np.ones((n, 1), dtype=bool)
    counts = rng.integers(1, per_sample + 1, n)
    keys = rng.random((n, num_classes))
    keys[np.arange(n), primary] = -1.0  # sorts first
    classes = np.argsort(keys, axis=1)[:, :per_sample]
    return classes, np.arange(per_sample)[None] < counts[:, None]


def task_labels(primary: np.ndarray, num_classes: int, tasks: int, seed: int
                ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Each task's (N,) int64 labels and class names, task ``class`` being
    ``primary``; the others group the classes by a permutation of their own."""
    out = {"class": (primary, [f"class{k}" for k in range(num_classes)])}
    groups = max(2, num_classes // 2)
    for t in range(1, tasks):
        perm = np.random.default_rng([seed, 100 + t]).permutation(num_classes)
        out[f"group{t}"] = ((perm % groups)[primary].astype(np.int64),
                            [f"g{g}" for g in range(groups)])
    return out


def _drop_modalities(arrays: dict[str, np.ndarray], missing_rate: float, seed: int,
                     ) -> dict[str, torch.Tensor]:
    """Zero one modality of round(rate·N) random samples, in place; the presence
    masks of the modalities some sample lacks."""
    names = list(arrays)
    n = len(next(iter(arrays.values())))
    rng = np.random.default_rng([seed, 1 + len(MODALITIES)])
    chosen = rng.permutation(n)[:round(missing_rate * n)]
    which = rng.integers(0, len(names), len(chosen))
    present = {}
    for j, name in enumerate(names):
        rows = chosen[which == j]
        if len(rows):
            arrays[name][rows] = 0
            mask = np.ones(n, dtype=bool)
            mask[rows] = False
            present[name] = torch.from_numpy(mask)
    return present


def load_synthetic(num_samples: int = 1200, num_classes: int = 4, seed: int = 0,
                   modalities: Iterable[str] = MODALITIES,
                   signal: Mapping[str, float] | None = None,
                   image_size: int = 16, text_length: int = 12, vocab_size: int = 64,
                   audio_bins: int = 32, audio_frames: int = 32,
                   tabular_features: int = 8, labels_per_sample: int = 1,
                   missing_rate: float = 0.0, tasks: int = 1) -> PreparedDataset:
    """A synthetic multimodal classification dataset; same options, same arrays.

    ``signal`` maps modality to its strength in [0, 1] (default 1 for each).
    ``labels_per_sample`` > 1 makes it multi-label (1 to that many classes per
    sample); ``missing_rate`` is the share of samples lacking one modality;
    ``tasks`` > 1 adds label columns (multi-task, see the module's text).
    Bad options raise ``DataValidationError`` naming ``source.options.<name>``.
    """
    if isinstance(modalities, str):
        modalities = (modalities,)
    chosen = tuple(modalities)
    strength = {m: 1.0 for m in MODALITIES}
    if signal is not None and not isinstance(signal, Mapping):
        raise _fail("signal", "must map modality to a number from 0 to 1")
    given = dict(signal or {})
    sizes = {"image_size": image_size, "text_length": text_length, "vocab_size": vocab_size,
             "audio_bins": audio_bins, "audio_frames": audio_frames,
             "tabular_features": tabular_features}
    _check_options(num_samples, num_classes, seed, chosen, given, sizes, labels_per_sample,
                   missing_rate, tasks)
    strength.update({m: float(v) for m, v in given.items()})

    rng = np.random.default_rng([seed, 0])
    primary = rng.permutation(np.arange(num_samples) % num_classes).astype(np.int64)
    classes, valid = _label_sets(primary, num_classes, labels_per_sample, rng)
    arrays: dict[str, np.ndarray] = {}
    for m in (m for m in MODALITIES if m in chosen):  # a fixed order, whatever was asked
        stream = np.random.default_rng([seed, 1 + MODALITIES.index(m)])
        if m == "tabular":
            array = _tabular(classes, valid, num_classes, tabular_features, strength[m],
                             stream)
        else:
            shown = _shown_class(classes, num_classes, strength[m], stream)
            if m == "image":
                array = _image(shown, valid, image_size, stream)
            elif m == "text":
                array = _text(shown, valid, num_classes, text_length, vocab_size, stream)
            else:
                array = _audio(shown, valid, num_classes, audio_bins, audio_frames, stream)
        arrays[m] = np.ascontiguousarray(array)
    present = _drop_modalities(arrays, missing_rate, seed) if missing_rate > 0 else {}
    inputs = {m: torch.from_numpy(a) for m, a in arrays.items()}
    if labels_per_sample == 1:
        labels = primary
    else:
        labels = np.zeros((num_samples, num_classes), dtype=np.uint8)
        np.put_along_axis(labels, classes, valid.astype(np.uint8), axis=1)

    class_names = [f"class{k}" for k in range(num_classes)]
    provenance: dict[str, Any] = {
        "builtin": "synthetic", "seed": seed, "num_classes": num_classes,
        "modalities": list(inputs), "signal": {m: strength[m] for m in inputs},
    }
    if labels_per_sample > 1:
        provenance["labels_per_sample"] = labels_per_sample
    if missing_rate > 0:
        provenance["missing_rate"] = float(missing_rate)
    if tasks > 1:
        provenance["tasks"] = tasks
    if "text" in inputs:
        vocab = ["<pad>"] + [pseudo_word(i) for i in range(1, vocab_size)]
        provenance["vocab"] = vocab
        provenance["keywords"] = {
            name: vocab[1 + k * KEYWORDS_PER_CLASS:1 + (k + 1) * KEYWORDS_PER_CLASS]
            for k, name in enumerate(class_names)}
    split = stratified_split(primary, seed=0)
    data = PreparedDataset.from_arrays(inputs, labels, split, class_names, provenance, present)
    if tasks > 1:
        columns = task_labels(primary, num_classes, tasks, seed)
        data.with_tasks({t: names for t, (_, names) in columns.items()},
                        {t: torch.from_numpy(y) for t, (y, _) in list(columns.items())[1:]})
    return data
