"""The tensor-resident data a run trains on, and the batches made from it.

The prepared dataset stays as tensors (on the GPU when it fits); batches are
made by indexing and normalised on the training device. Missing modalities
(the dataset's presence masks) become masks; a missing sample's values are
zeroed after normalisation, so nothing stored for it leaks into a mixing
partner. Categorical tabular columns hold category codes, which are neither
standardised nor interpolated as numbers.
"""

from collections.abc import Mapping

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.mixing import Mixed
from app.ml.training.normalization import NormalizeFn

# Keep at most this share of free GPU memory for the resident dataset.
GPU_RESIDENT_SHARE = 0.5


def data_device(tensors: list[torch.Tensor], device: torch.device) -> torch.device:
    """Where the dataset lives: the training device when it fits, else the host."""
    if device.type != "cuda":
        return device
    needed = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    return device if needed < free * GPU_RESIDENT_SHARE else torch.device("cpu")


def rows_to(x: torch.Tensor, idx: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of ``x`` on ``device``. From host memory to a GPU they are
    gathered into pinned (page-locked) memory first, so the copy is asynchronous:
    a copy from pageable memory makes CUDA wait for the stream to drain, a
    host–device sync every batch. The pinned blocks come from torch's caching
    host allocator, which reuses a block only once its copy has finished."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x[idx].to(device, non_blocking=True)
    if isinstance(idx, slice):
        rows = x[idx]
        staged = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True).copy_(rows)
    else:
        staged = torch.empty((idx.shape[0], *x.shape[1:]), dtype=x.dtype, pin_memory=True)
        torch.index_select(x, 0, idx, out=staged)
    return staged.to(device, non_blocking=True)


def gather(inputs: Mapping[str, torch.Tensor], normalize: Mapping[str, NormalizeFn],
           idx: torch.Tensor | slice, device: torch.device,
           present: Mapping[str, torch.Tensor] | None = None,
           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Normalised modalities of rows ``idx`` and their presence masks; a missing
    sample's values become 0 (the train mean; padding for token ids)."""
    batch, masks = {}, {}
    for m, x in inputs.items():
        value = normalize[m](rows_to(x, idx, device))
        if present is not None and m in present:
            keep = rows_to(present[m], idx, device)
            masks[m] = keep
            value = value * keep.view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
        batch[m] = value
    return batch, masks


def with_own_codes(mixed: Mixed, batch: Mapping[str, torch.Tensor],
                   codes: Mapping[str, list[int]]) -> None:
    """Put each sample's own category codes back where ``mix`` interpolated them
    as numbers; the tabular encoder mixes their embeddings instead."""
    for m, columns in codes.items():
        if columns and m in mixed.ops:
            value = mixed.inputs[m].clone()
            for c in columns:  # plain column copies: no index tensor sent to the device
                value[:, c] = batch[m][:, c]
            mixed.inputs[m] = value


def noisy(x: dict[str, torch.Tensor], noise: float, generator: torch.Generator | None,
          codes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Gaussian noise of std ``noise`` on the float inputs, category codes excepted."""
    out = {}
    for m, v in x.items():
        if not v.is_floating_point():
            out[m] = v
            continue
        eps = noise * torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype)
        for c in codes.get(m, ()):
            eps[:, c] = 0.0
        out[m] = v + eps
    return out


def vocab_sizes(data: PreparedDataset, modalities: list[str]) -> dict[str, int]:
    """Per text modality, the embedding table's size: largest id + 1 (or the vocab's)."""
    vocab = data.provenance.get("vocab")
    sizes = {}
    for m in modalities:
        if data.modality_kinds.get(m) == "text":
            top = int(data.inputs[m].max()) + 1 if data.inputs[m].numel() else 1
            sizes[m] = max(top, len(vocab) if isinstance(vocab, list) else 0, 2)
    return sizes


def categorical_columns(data: PreparedDataset, modalities: list[str]) -> dict[str, dict[int, int]]:
    """Per tabular modality with category columns, {column: number of codes}.

    Read from ``provenance["tabular"][modality]`` as Parquet ingestion writes
    it: the numeric ``columns`` first, then one code column per entry of
    ``categorical`` (name → categories seen in train), coded 0 (missing or
    unseen) and 1 … len(categories).
    """
    meta = data.provenance.get("tabular")
    if not isinstance(meta, Mapping):
        return {}
    out: dict[str, dict[int, int]] = {}
    for m in modalities:
        info = meta.get(m)
        if data.modality_kinds.get(m) != "tabular" or not isinstance(info, Mapping):
            continue
        numeric = len(info.get("columns") or [])
        categories = list((info.get("categorical") or {}).values())
        width = int(data.inputs[m].shape[1])
        if numeric + len(categories) != width:
            raise ValueError(f"tabular modality {m!r} has {width} columns but its metadata "
                             f"lists {numeric} numeric and {len(categories)} categorical")
        if categories:
            out[m] = {numeric + j: len(values) + 1 for j, values in enumerate(categories)}
    return out
