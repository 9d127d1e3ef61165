"""The canonical prepared form every dataset is converted to once.

One safetensors blob: a tensor per modality (first dim = sample), ``label``
(as trained on, possibly noisy), ``label_clean`` and ``split`` (0 train, 1 val,
2 test); class names and provenance travel in the safetensors metadata as JSON.
Workers only ever read this form, never a user's original file.

Labels are class indices (N,) int64 for single-label data, or multi-hot rows
(N, K) uint8, K = len(class_names), for multi-label data (``multilabel``).
A modality that some samples lack has ``present.<modality>``, an (N,) bool mask;
no mask means every sample has it (blobs written before masks existed load so).
The values stored for a missing sample are zeros and carry no meaning.

Multi-task data has several label columns, each one class per sample: ``tasks``
maps each task to its class names, in order. The first task is the primary
one: its labels are ``labels`` / ``label_clean`` and its classes
``class_names``, so whatever reads one label (previews, splits, label noise)
keeps working; every other task's (N,) int64 labels are ``task_labels[task]``,
stored as ``label.<task>``.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.ml.safetensors_meta import header_metadata

SPLITS: tuple[str, ...] = ("train", "val", "test")
_RESERVED = {"label", "label_clean", "split"}
PRESENT_PREFIX = "present."
TASK_LABEL_PREFIX = "label."


@dataclass
class PreparedDataset:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    clean_labels: torch.Tensor
    split: torch.Tensor
    class_names: list[str]
    modality_kinds: dict[str, str]
    provenance: dict[str, Any] = field(default_factory=dict)
    # modality -> (N,) bool, True where the sample has it; absent key: all present
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    # (N,) each row's position in the source's order, where rows were reordered
    # (the sharded form groups them by split); None: the source's order
    source_rows: torch.Tensor | None = None
    # multi-task data: task -> class names, the first task's being class_names
    tasks: dict[str, list[str]] = field(default_factory=dict)
    # the (N,) int64 labels of every task but the first (whose are ``labels``)
    task_labels: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, inputs: dict[str, torch.Tensor], labels: np.ndarray,
                    split: np.ndarray, class_names: list[str],
                    provenance: dict[str, Any],
                    present: dict[str, torch.Tensor] | None = None) -> "PreparedDataset":
        """A dataset whose labels are clean, modalities named after their kind."""
        return cls(inputs=inputs, labels=torch.from_numpy(labels),
                   clean_labels=torch.from_numpy(labels.copy()),
                   split=torch.from_numpy(split), class_names=class_names,
                   modality_kinds={name: name for name in inputs}, provenance=provenance,
                   present=dict(present or {}))

    @property
    def multilabel(self) -> bool:
        return self.labels.dim() == 2

    @property
    def multitask(self) -> bool:
        return len(self.tasks) > 1

    def labels_of(self, task: str) -> torch.Tensor:
        """(N,) class indices of ``task`` (the primary task's are ``labels``)."""
        if task not in self.tasks:
            raise KeyError(f"no task {task!r}; the dataset has {', '.join(self.tasks)}")
        return self.labels if task == next(iter(self.tasks)) else self.task_labels[task]

    def with_tasks(self, tasks: dict[str, list[str]],
                   task_labels: dict[str, torch.Tensor]) -> "PreparedDataset":
        """Itself, multi-task: ``tasks`` in order (the first is ``labels``'s),
        ``task_labels`` the others' (N,) labels; ``ValueError`` when they do not fit."""
        names = list(tasks)
        if names and tasks[names[0]] != self.class_names:
            raise ValueError("the first task's classes must be class_names")
        if sorted(task_labels) != sorted(names[1:]):
            raise ValueError(f"labels for tasks {sorted(task_labels)}, expected {names[1:]}")
        for name, y in task_labels.items():
            if y.shape != (self.num_samples,) or y.dtype != torch.int64:
                raise ValueError(f"task {name!r}: labels must be int64 ({self.num_samples},)")
        self.tasks = {k: list(v) for k, v in tasks.items()}
        self.task_labels = {k: task_labels[k] for k in names[1:]}
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def split_indices(self, name: str) -> torch.Tensor:
        return torch.nonzero(self.split == SPLITS.index(name), as_tuple=False).squeeze(1)

    def source_index(self, rows: Sequence[int]) -> list[int]:
        """Where rows ``rows`` stand in the source's order (what previews report)."""
        if self.source_rows is None:
            return [int(r) for r in rows]
        return self.source_rows[torch.as_tensor(list(rows), dtype=torch.long)].tolist()

    def presence(self, modality: str) -> torch.Tensor:
        """(N,) bool: which samples have ``modality``."""
        mask = self.present.get(modality)
        if mask is None:
            return torch.ones(self.num_samples, dtype=torch.bool)
        return mask.bool()

    def label_name(self, index: int) -> str:
        """The class name of sample ``index``; for multi-label data its classes
        joined with "+" ("(none)" for an empty set)."""
        if not self.multilabel:
            return self.class_names[int(self.labels[index])]
        chosen = torch.nonzero(self.labels[index], as_tuple=False).flatten().tolist()
        return "+".join(self.class_names[k] for k in chosen) or "(none)"

    def to_resident(self) -> "PreparedDataset":
        """The dataset as tensors: itself (``ShardedDataset`` reads its shards)."""
        return self

    def close(self) -> None:
        """Release what reading it holds: nothing for tensors (``ShardedDataset``
        unmaps its shards)."""

    def value_range(self, modality: str) -> tuple[float, float]:
        t = self.inputs[modality]
        if t.dtype == torch.uint8:
            return 0.0, 255.0
        return float(t.min()), float(t.max())

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: modalities (with missing counts where some
        samples lack one), classes with counts (multi-label: positives per
        class), split sizes."""
        counts = {s: self._class_counts(self.split_indices(s)) for s in SPLITS}
        train = self.split_indices("train")
        wrong = self.labels[train] != self.clean_labels[train]
        noisy = int(wrong.any(dim=1).sum() if self.multilabel else wrong.sum())
        # a text vocabulary can be long: the summary gives its size, not its words
        provenance = {k: v for k, v in self.provenance.items() if k != "vocab"}
        vocab = self.provenance.get("vocab")
        if isinstance(vocab, list):
            provenance["vocab_size"] = len(vocab)
        modalities = []
        for k, v in self.inputs.items():
            entry: dict[str, Any] = {"name": k, "kind": self.modality_kinds[k],
                                     "shape": list(v.shape[1:]),
                                     "dtype": str(v.dtype).removeprefix("torch.")}
            if self.modality_kinds[k] == "text" and isinstance(vocab, list):
                entry["vocab_size"] = len(vocab)
            if k in self.present:
                absent = ~self.present[k].bool()
                entry["missing"] = int(absent.sum())
                entry["missing_split_counts"] = {
                    s: int(absent[self.split_indices(s)].sum()) for s in SPLITS}
            modalities.append(entry)
        out = {
            "num_samples": self.num_samples,
            "modalities": modalities,
            "classes": [
                {"index": i, "name": n, "count": sum(counts[s][i] for s in SPLITS),
                 "split_counts": {s: counts[s][i] for s in SPLITS}}
                for i, n in enumerate(self.class_names)
            ],
            "split_sizes": {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)},
            "noisy_train_labels": noisy,
            "multilabel": self.multilabel,
            "provenance": provenance,
        }
        if self.multitask:
            out["tasks"] = [self._task_summary(t, names) for t, names in self.tasks.items()]
        return out

    def _task_summary(self, task: str, names: list[str]) -> dict[str, Any]:
        counts = torch.bincount(self.labels_of(task), minlength=len(names)).tolist()
        return {"name": task, "classes": [{"index": i, "name": n, "count": int(c)}
                                          for i, (n, c) in enumerate(zip(names, counts,
                                                                         strict=True))]}

    def _class_counts(self, rows: torch.Tensor) -> list[int]:
        labels = self.labels[rows]
        if self.multilabel:
            return labels.long().sum(dim=0).tolist()
        return torch.bincount(labels, minlength=self.num_classes).tolist()


def to_bytes(ds: PreparedDataset) -> bytes:
    tensors = {k: v.contiguous() for k, v in ds.inputs.items()}
    tensors.update(label=ds.labels.contiguous(), label_clean=ds.clean_labels.contiguous(),
                   split=ds.split.contiguous())
    for name, mask in ds.present.items():
        if name not in ds.inputs:
            raise ValueError(f"presence mask for {name!r}, which is not a modality")
        tensors[PRESENT_PREFIX + name] = mask.bool().contiguous()
    for name, y in ds.task_labels.items():
        tensors[TASK_LABEL_PREFIX + name] = y.contiguous()
    meta = {"class_names": ds.class_names, "modality_kinds": ds.modality_kinds,
            "provenance": ds.provenance, "format": "mixlab.prepared/1"}
    if ds.tasks:
        meta["tasks"] = [[t, names] for t, names in ds.tasks.items()]  # a list keeps the order
    return st_save(tensors, metadata={"mixlab": json.dumps(meta)})


def from_bytes(blob: bytes) -> PreparedDataset:
    tensors = st_load(blob)
    meta = json.loads(header_metadata(blob)["mixlab"])
    kinds = dict(meta["modality_kinds"])
    masks = {k for k in tensors
             if k.startswith(PRESENT_PREFIX) and k.removeprefix(PRESENT_PREFIX) in kinds}
    # safetensors sorts tensors by name: restore the modalities' own order
    task_keys = {k for k in tensors if k.startswith(TASK_LABEL_PREFIX)}
    names = [k for k in kinds if k in tensors] + sorted(
        k for k in tensors
        if k not in _RESERVED and k not in kinds and k not in masks and k not in task_keys)
    inputs = {k: tensors[k] for k in names}
    present = {k.removeprefix(PRESENT_PREFIX): tensors[k] for k in sorted(masks)}
    return PreparedDataset(inputs=inputs, labels=tensors["label"],
                           clean_labels=tensors["label_clean"], split=tensors["split"],
                           class_names=list(meta["class_names"]),
                           modality_kinds=kinds,
                           provenance=dict(meta.get("provenance", {})),
                           present=present, **stored_tasks(meta, tensors))


def stored_tasks(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``tasks`` and ``task_labels`` as a blob's (or a shard index's) metadata and
    tensors hold them (nothing for single-task data)."""
    tasks = {str(t): list(names) for t, names in meta.get("tasks", [])}
    return {"tasks": tasks,
            "task_labels": {t: tensors[TASK_LABEL_PREFIX + t] for t in list(tasks)[1:]}}
