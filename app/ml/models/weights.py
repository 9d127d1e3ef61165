"""Loading weights into a model by name and shape, keeping what fits.

A weights file rarely fits a model exactly: another number of classes gives
the head another shape, another input gives the stem other channels. Matching
tensor by tensor lets everything else load and says precisely what did not,
so a run can report it (``WeightMatch.to_json``) instead of failing or silently
ignoring the file. ``match_state`` works on shapes alone: with
``app.ml.safetensors_meta.tensor_shapes`` and a model built on the meta device
it checks a file without reading its tensors or allocating the model.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class WeightMatch:
    """How a file's tensors met a model's state: ``loaded`` (same name and shape),
    ``mismatched`` ({name: (model's shape, file's shape)}), ``missing`` (in the
    model, not the file) and ``unexpected`` (in the file, not the model); names
    sorted."""

    loaded: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[Shape, Shape]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model tensor came from the file, and the file had nothing else."""
        return not (self.mismatched or self.missing or self.unexpected)

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary for a run to report (shapes as lists)."""
        return {"loaded": len(self.loaded),
                "mismatched": {k: {"expected": list(e), "got": list(g)}
                               for k, (e, g) in self.mismatched.items()},
                "missing": list(self.missing), "unexpected": list(self.unexpected)}


def _shape(value: Any) -> Shape:
    return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else value))


def match_state(model_state: Mapping[str, Any], tensors: Mapping[str, Any],
                prefix: str = "") -> WeightMatch:
    """Match ``tensors`` ({name: shape, or tensor}) against ``model_state`` ({name:
    torch.Size / tuple / tensor}, e.g. a state dict). File name ``k`` stands for
    model name ``prefix + k`` (``prefix="net."`` loads a plain torchvision/timm
    state into a ``ZooModel``)."""
    model = {k: _shape(v) for k, v in model_state.items()}
    given = {prefix + k: _shape(v) for k, v in tensors.items()}
    loaded, mismatched = [], {}
    for name in sorted(model.keys() & given.keys()):
        if model[name] == given[name]:
            loaded.append(name)
        else:
            mismatched[name] = (model[name], given[name])
    return WeightMatch(loaded, mismatched, sorted(model.keys() - given.keys()),
                       sorted(k[len(prefix):] for k in given.keys() - model.keys()))


# where a file's names may sit in a model's state: as they are, or under the
# torchvision/timm wrapper (``ZooModel.net``), so a plain library state dict loads
PREFIXES = ("", "net.")


def best_match(model_state: Mapping[str, Any], tensors: Mapping[str, Any],
               prefixes: tuple[str, ...] = PREFIXES) -> tuple[str, WeightMatch]:
    """The prefix (of ``prefixes``) under which most of ``tensors`` fit, and that match."""
    matches = [(p, match_state(model_state, tensors, p)) for p in prefixes]
    return max(matches, key=lambda pm: len(pm[1].loaded))


@torch.no_grad()
def load_matching(model: nn.Module, tensors: Mapping[str, torch.Tensor],
                  prefix: str | None = None) -> WeightMatch:
    """Copy into ``model`` the tensors of ``tensors`` whose name (``prefix`` + name)
    and shape match a parameter or buffer of its state, cast to that tensor's
    dtype and device; leave the rest as they are and return the match. Without a
    ``prefix``, the one of ``PREFIXES`` under which most tensors fit."""
    state = model.state_dict(keep_vars=True)
    if prefix is None:
        prefix, match = best_match(state, tensors)
    else:
        match = match_state(state, tensors, prefix)
    for name in match.loaded:
        target = state[name]
        target.data.copy_(tensors[name[len(prefix):]].to(dtype=target.dtype))
    return match


def load_matching_file(model: nn.Module, path: str | os.PathLike[str],
                       prefix: str | None = None) -> WeightMatch:
    """``load_matching`` from safetensors file ``path``, on the CPU."""
    from safetensors.torch import load_file

    return load_matching(model, load_file(os.fspath(path), device="cpu"), prefix)
