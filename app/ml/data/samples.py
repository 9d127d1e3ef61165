"""Samples read for prediction, and encoding them as a model's training data was.

A file sent to a trained model is read by the dataset readers (``npz``,
``parquet``, ``archive``) in their prediction mode: labels are optional (a
cell without one is ``None``), there is no split, and nothing is fitted to the
file itself. What the readers would fit on a dataset's train split (the text
vocabulary, tabular standardisation, category codes) must instead come from
the data the model was trained on, or the model would read other numbers than
it learnt from; ``Encoding`` carries that, and ``apply_encoding`` maps a
file's words and categories onto it. ``fit_spec`` makes the reader produce the
sizes the model takes (image side and channels, tokens per text, clip length).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from app.ml.data.errors import DataValidationError
from app.ml.data.ingest_spec import IngestSpec, ModalitySpec

Label = str | list[str] | None  # a class name, a set of them (multi-label), or unknown

TABLE_FORMATS = ("parquet", "zip", "tar")


@dataclass
class Samples:
    """Inputs in the prepared form (one tensor per modality, first dim = sample),
    and per sample its label as class name(s), where the file gives one.

    ``provenance`` is the reader's: for table formats the file's own ``vocab``
    and ``tabular`` codes, which ``apply_encoding`` replaces. ``task_labels``:
    multi-task labels (task → each sample's class name, None where it has
    none), where the file gives them; ``labels`` is then the first task's."""

    inputs: dict[str, torch.Tensor]
    kinds: dict[str, str]
    labels: list[Label] | None  # None: the file has no labels at all
    provenance: dict[str, Any] = field(default_factory=dict)
    task_labels: dict[str, list[Label]] | None = None

    @property
    def num_samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass(frozen=True)
class Encoding:
    """How a model's training data encoded raw values: its class names (integer
    labels without ``class_names`` index them), its text ``vocab`` (index →
    word) and its ``tabular`` provenance (numeric columns with train mean/std,
    categorical columns with their categories), as ``PreparedDataset.provenance``
    holds them."""

    class_names: list[str]
    vocab: list[str] | None = None
    tabular: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, class_names: list[str], provenance: Mapping[str, Any]) -> "Encoding":
        vocab = provenance.get("vocab")
        tabular = provenance.get("tabular")
        return cls(list(class_names), list(vocab) if isinstance(vocab, list) else None,
                   dict(tabular) if isinstance(tabular, Mapping) else {})


def spec_from_provenance(provenance: Mapping[str, Any],
                         source_spec: Mapping[str, Any] | None) -> IngestSpec | None:
    """The spec a Parquet / manifest dataset was read with: the same columns as the
    same modalities (inferred ones included, from its provenance), with the
    options it was given. None for other sources: the file's columns are inferred."""
    given = IngestSpec.from_dict(dict(source_spec)) if source_spec else None
    mods = provenance.get("modalities")
    if (provenance.get("format") not in TABLE_FORMATS or provenance.get("layout") == "folders"
            or not isinstance(mods, Mapping)):
        return given
    base = given or IngestSpec()
    tabular = provenance.get("tabular") if isinstance(provenance.get("tabular"), Mapping) else {}
    modalities: dict[str, ModalitySpec] = {}
    for name, info in mods.items():
        kind, columns = info.get("kind"), list(info.get("columns") or [])
        options = base.modalities.get(name)
        if kind == "tabular":
            meta = tabular.get(name) or {}
            modalities[name] = ModalitySpec(
                kind="tabular", columns=tuple(meta.get("columns") or columns),
                categorical=tuple(meta.get("categorical") or ()))
        elif columns:
            modalities[name] = (replace(options, column=columns[0]) if options is not None
                                else ModalitySpec(kind=kind, column=columns[0]))
    return replace(base, modalities=modalities, split=None)


def fit_spec(spec: IngestSpec, shapes: Mapping[str, tuple[int, ...]], multilabel: bool,
             max_vocab: int) -> IngestSpec:
    """``spec`` with each modality the model reads made to the model's per-sample
    shape. Text keeps every word (``max_vocab``): ``apply_encoding`` maps words
    to the training vocabulary. Tabular columns stay raw: the training
    standardisation is applied by ``apply_encoding``."""
    modalities = {}
    for name, m in spec.modalities.items():
        shape = tuple(shapes.get(name, ()))
        if m.kind == "image" and len(shape) == 3:
            m = replace(m, channels=shape[0], size=(shape[1], shape[2]))
        elif m.kind == "text":
            m = replace(m, vocab_size=max_vocab,
                        max_length=shape[0] if len(shape) == 1 else m.max_length)
        elif m.kind == "audio" and len(shape) == 1:
            # the training clips' rate: resample every clip to it, as the model heard them
            rate = m.sample_rate or max(1, round(shape[0] / m.clip_seconds))
            m = replace(m, sample_rate=rate, clip_seconds=shape[0] / rate)
        elif m.kind == "tabular":
            m = replace(m, normalise=False)
        modalities[name] = m
    return replace(spec, modalities=modalities, multilabel=spec.multilabel or multilabel)


def apply_encoding(samples: Samples, encoding: Encoding) -> Samples:
    """A table file's samples with the training data's codes: words → training
    vocabulary ids (unknown words → ``<unk>``, as in training), numeric tabular
    columns standardised with the training statistics, categories → training
    codes (0 for one never seen in training). ``.npz`` samples hold ids and
    codes already and are returned as they are."""
    if samples.provenance.get("format") not in TABLE_FORMATS:
        return samples
    inputs = dict(samples.inputs)
    for name, kind in samples.kinds.items():
        if kind == "text":
            inputs[name] = _words_to_training_ids(name, inputs[name], samples.provenance,
                                                  encoding)
        elif kind == "tabular":
            inputs[name] = _training_tabular(name, inputs[name], samples.provenance, encoding)
    return replace(samples, inputs=inputs)


def _words_to_training_ids(name: str, ids: torch.Tensor, provenance: Mapping[str, Any],
                           encoding: Encoding) -> torch.Tensor:
    if encoding.vocab is None:
        raise DataValidationError(name, "the model's training data has no vocabulary to map "
                                  "words to token ids; send token ids in an .npz instead")
    position = {word: i for i, word in enumerate(encoding.vocab)}
    file_vocab = list(provenance.get("vocab") or ["<pad>", "<unk>"])
    remap = np.array([position.get(w, 1) for w in file_vocab], np.int64)
    remap[:2] = (0, 1)  # <pad>, <unk>
    return torch.from_numpy(remap[ids.numpy()])


def _training_tabular(name: str, x: torch.Tensor, provenance: Mapping[str, Any],
                      encoding: Encoding) -> torch.Tensor:
    mine = (provenance.get("tabular") or {}).get(name) or {}
    theirs = encoding.tabular.get(name)
    if not isinstance(theirs, Mapping):
        return x  # trained on raw features (an .npz): nothing was fitted
    columns, categorical = list(mine.get("columns") or []), dict(mine.get("categorical") or {})
    want_columns = list(theirs.get("columns") or [])
    want_categorical = dict(theirs.get("categorical") or {})
    if columns != want_columns or list(categorical) != list(want_categorical):
        raise DataValidationError(name, f"columns {columns + list(categorical)} differ from "
                                  f"the {want_columns + list(want_categorical)} the model was "
                                  "trained on")
    out = x.numpy().copy()
    means, stds = theirs.get("mean"), theirs.get("std")
    if means is not None and stds is not None:
        for j, (mean, std) in enumerate(zip(means, stds, strict=True)):
            out[:, j] -= np.float32(mean)  # as ingestion standardised the training data
            out[:, j] /= np.float32(std)
    for j, col in enumerate(categorical):
        position = {c: i + 1 for i, c in enumerate(want_categorical[col])}
        remap = np.array([0, *(position.get(c, 0) for c in categorical[col])], np.float32)
        k = len(columns) + j
        out[:, k] = remap[out[:, k].astype(np.int64)]
    return torch.from_numpy(out)
