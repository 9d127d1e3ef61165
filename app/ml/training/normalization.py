"""Input normalisation with train-split statistics, saved with the checkpoint.

Each modality gets a ``Normalizer``: ``Standardize`` ((x - mean) · 1/std over
the dims its kind calls for) or ``Identity`` (token ids, integer codes). They
are applied per batch, so the resident copy of the data keeps its compact
dtype, and they serialise to JSON (``to_json``/``from_json``) so a checkpoint
alone turns raw inputs into what the model was trained on.
"""

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

# float64 bytes of one chunk of ``moments`` (a few copies of it are live at once)
MOMENTS_CHUNK_BYTES = 16 * 1024**2


def moments(train: torch.Tensor, dims: list[int], chunk_rows: int | None = None,
            rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ``dims`` (0 among them; kept for broadcasting), summed in
    float64 over chunks of rows (at most 8,192, ``MOMENTS_CHUNK_BYTES`` of
    float64), so no float copy of the whole split is made and large rows (a
    streamed dataset's) stay within a bounded memory.
    ``rows`` (bool (N,)) limits them to those rows: the samples that have the
    modality, so a missing sample's zeros do not pull the statistics."""
    if chunk_rows is None:
        per_row = max(1, math.prod(train.shape[1:])) * 8
        chunk_rows = max(1, min(8192, MOMENTS_CHUNK_BYTES // per_row))
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count = 0
    for start in range(0, train.shape[0], chunk_rows):
        part = train[start:start + chunk_rows]
        if rows is not None:
            part = part[rows[start:start + chunk_rows]]
        part = part.to(torch.float64)
        part_sum = part.sum(dim=dims, keepdim=True)
        part_sq = (part * part).sum(dim=dims, keepdim=True)
        total = part_sum if total is None else total + part_sum
        squares = part_sq if squares is None else squares + part_sq
        count += part.numel() // part_sum.numel()
    if total is None or squares is None or count <= 1:
        shape = [1 if d in dims else n for d, n in enumerate(train.shape)]
        return (torch.zeros(shape, device=train.device), torch.ones(shape, device=train.device))
    mean = total / count
    var = ((squares - count * mean * mean) / (count - 1)).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


class Identity:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to(self, device: torch.device | str) -> "Identity":
        return self

    def to_json(self) -> dict[str, object]:
        return {"type": "identity"}


@dataclass
class Standardize:
    """(x - mean) · inv_std; ``mean`` and ``inv_std`` broadcast against a batch."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std

    def to(self, device: torch.device | str) -> "Standardize":
        return Standardize(self.mean.to(device), self.inv_std.to(device))

    def to_json(self) -> dict[str, object]:
        # float32 → Python float → JSON → float32 round-trips exactly
        return {"type": "standardize", "shape": list(self.mean.shape),
                "mean": self.mean.flatten().tolist(), "inv_std": self.inv_std.flatten().tolist()}


Normalizer = Identity | Standardize


def _standardize(train: torch.Tensor, dims: list[int], device: torch.device,
                 rows: torch.Tensor | None, keep: list[int] | None = None) -> Standardize:
    mean, std = moments(train, dims, rows=rows)
    inv_std = 1.0 / std.clamp_min(1e-6)
    if keep:  # columns left as they are: category codes
        mean[:, keep], inv_std[:, keep] = 0.0, 1.0
    return Standardize(mean.to(device), inv_std.to(device))


def fit(kind: str, train: torch.Tensor, device: torch.device,
        rows: torch.Tensor | None = None, codes: list[int] | None = None) -> Normalizer:
    """The normaliser of one modality from its train split (``rows``: the samples
    that have it; ``codes``: tabular columns holding category codes): images per
    channel, video per channel over frames, tabular per feature, audio one scale;
    token ids and integer data untouched."""
    if kind == "image":
        return _standardize(train, [0, *range(2, train.dim())], device, rows)
    if kind == "text" or not (train.is_floating_point() or kind == "video"):
        return Identity()
    if kind == "video":  # (N, T, C, H, W)
        return _standardize(train, [0, 1, *range(3, train.dim())], device, rows)
    if kind == "tabular":
        return _standardize(train, [0], device, rows, keep=codes)
    return _standardize(train, list(range(train.dim())), device, rows)


def to_json(normalizers: Mapping[str, Normalizer]) -> str:
    return json.dumps({m: n.to_json() for m, n in normalizers.items()})


def from_json(text: str, device: torch.device | str = "cpu") -> dict[str, Normalizer]:
    out: dict[str, Normalizer] = {}
    for m, entry in json.loads(text).items():
        if entry["type"] == "identity":
            out[m] = Identity()
            continue
        shape = entry["shape"]
        out[m] = Standardize(torch.tensor(entry["mean"], dtype=torch.float32).view(shape),
                             torch.tensor(entry["inv_std"], dtype=torch.float32).view(shape)
                             ).to(device)
    return out


NormalizeFn = Callable[[torch.Tensor], torch.Tensor]
