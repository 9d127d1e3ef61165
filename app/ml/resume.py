"""Everything a run needs to carry on after its worker died, as one safetensors blob.

The model checkpoint users download holds the weights only; this resume point
adds the optimizer's state, the random generators' states (data order,
mixing, host-side draws, and torch's global one for dropout) and where the
loop was. A run resumed from it at an epoch boundary continues exactly as the
uninterrupted run would have on the same device. Safetensors holds tensors
and string metadata only, so loading a resume point never unpickles anything.
"""

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.ml.safetensors_meta import header_metadata

_MODEL, _OPTIM, _GEN = "model.", "optim.", "generator."
_TORCH_RNG = "rng.torch"
_CUDA_RNG = "rng.cuda."
_STATE = "state."


@dataclass
class ResumePoint:
    epoch: int  # the last completed epoch
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch.optim state_dict
    generators: dict[str, torch.Tensor]  # name -> Generator.get_state()
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able loop state
    # named groups of tensors the loop keeps besides the model (the weight
    # average "ema", the best epoch's weights "best")
    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def to_bytes(point: ResumePoint) -> bytes:
    tensors = {f"{_MODEL}{k}": v.detach().to("cpu").contiguous() for k, v in point.model.items()}
    optim_tensors, optim_meta = _split_optimizer(point.optimizer)
    tensors.update(optim_tensors)
    tensors.update({f"{_GEN}{k}": v.clone() for k, v in point.generators.items()})
    tensors[_TORCH_RNG] = point.torch_rng.clone()
    tensors.update({f"{_CUDA_RNG}{i}": s.clone() for i, s in enumerate(point.cuda_rng)})
    for group, values in point.states.items():
        if "." in group:
            raise ValueError(f"state group names hold no dots: {group!r}")
        tensors.update({f"{_STATE}{group}.{k}": v.detach().to("cpu").contiguous()
                        for k, v in values.items()})
    metadata = {"epoch": str(point.epoch), "step": str(point.step),
                "optimizer": json.dumps(optim_meta), "extra": json.dumps(point.extra)}
    return st_save(_unshared(tensors), metadata=metadata)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors whose storage another entry already holds: safetensors
    refuses shared memory, and the best epoch's weights may be the model's own."""
    seen: set[int] = set()
    out = {}
    for name, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        out[name] = value.clone() if ptr in seen else value
        if ptr != -1:
            seen.add(ptr)
    return out


def from_bytes(blob: bytes) -> ResumePoint:
    tensors = st_load(blob)
    metadata = header_metadata(blob)
    optim_meta = json.loads(metadata["optimizer"])
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            index, name = key[len(_OPTIM):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, values in optim_meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    cuda = sorted((int(k[len(_CUDA_RNG):]), v) for k, v in tensors.items()
                  if k.startswith(_CUDA_RNG))
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_STATE):
            group, name = key[len(_STATE):].split(".", 1)
            states.setdefault(group, {})[name] = value
    return ResumePoint(
        epoch=int(metadata["epoch"]), step=int(metadata["step"]),
        model={k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)},
        optimizer={"state": state, "param_groups": optim_meta["param_groups"]},
        generators={k[len(_GEN):]: v for k, v in tensors.items() if k.startswith(_GEN)},
        torch_rng=tensors[_TORCH_RNG], cuda_rng=[v for _, v in cuda],
        extra=json.loads(metadata.get("extra", "{}")), states=states)

