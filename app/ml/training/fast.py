"""What makes the GPU path fast, each part a no-op where it does not pay.

- **channels_last** (``Speed.prepare``): conv nets on CUDA keep their weights,
  and get their 4-D inputs, in NHWC memory order, which cuDNN's tensor-core
  convolutions run on without transposing. On CPU the model stays as it is.
- **training.compile** (``Speed.compile``): the model's forward is compiled with
  ``torch.compile`` for training steps (train mode with gradients); evaluation
  stays eager, so it never waits for a compile of its own shapes. Compiling
  happens in a probe step before the run starts (a forward and backward on the
  first rows, with its own generators, and torch's RNG, the model's buffers
  and the gradients left as they were), so a worker that cannot compile (no
  C++ compiler, no Triton for its GPU) trains eagerly from the first step with
  a warning in the run's log, and its device string says so. A compile that
  fails later (a new batch shape) falls back the same way.

``keep_compile_cache`` points Inductor's cache at a folder of the worker's, so a
worker compiles a model once and later runs load it.
"""

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# torch.compile's backend; the tests put one that fails here
COMPILE_BACKEND: str | Callable[..., Any] = "inductor"
_REASON_CHARS = 160  # of a compile error, in the device string


def keep_compile_cache(folder: Path) -> None:
    """Inductor's cache in ``folder``, unless the operator chose one
    (``TORCHINDUCTOR_CACHE_DIR``); read when the first model compiles."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


def is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() == 4 and value.is_floating_point():
            return value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, Mapping):  # a multimodal batch: modality → tensor
        return {k: _channels_last(v) for k, v in value.items()}
    return value


def _channels_last_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_channels_last(a) for a in args)


class _TrainingForward:
    """A module's forward, compiled while the module trains with gradients."""

    def __init__(self, module: nn.Module, on_failure: Callable[[BaseException], None]) -> None:
        self.module = module
        self.eager = module.forward
        self.compiled = torch.compile(self.eager, backend=COMPILE_BACKEND)
        self.on_failure = on_failure
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed and self.module.training and torch.is_grad_enabled():
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # compiling failed: this step and the rest run eagerly
                self.failed = True
                self.on_failure(exc)
        return self.eager(*args, **kwargs)


class Speed:
    """The speed-ups a run's model got, for its device string."""

    def __init__(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        self.compiled = False
        self.compile_error: str | None = None

    @classmethod
    def prepare(cls, model: nn.Module, device: torch.device) -> "Speed":
        """channels_last for a conv net on CUDA. Call it before the optimizer and the
        weight average are made, so that their tensors take the model's layout."""
        if device.type != "cuda" or not is_conv_net(model):
            return cls(False)
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_channels_last_inputs)
        return cls(True)

    def compile(self, model: nn.Module, probe: Callable[[], None]) -> None:
        """Compile ``model``'s training forward and run ``probe`` (one training
        step's forward and backward) so that compiling happens now; on failure
        the model stays eager and the reason is kept."""
        try:
            # a worker trains run after run in one process: past dynamo's cache limit per
            # function (8 models) it would run eagerly without a word. Inductor's cache
            # on disk keeps what was compiled.
            torch._dynamo.reset()
            forward = _TrainingForward(model, self._failed)
        except Exception as exc:  # torch.compile unavailable here
            self._failed(exc)
            return
        model.forward = forward  # type: ignore[method-assign]
        self.compiled = True
        try:
            probe()
        except Exception as exc:  # compiling the backward failed
            model.forward = forward.eager  # type: ignore[method-assign]
            forward.failed = True
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(reason) > _REASON_CHARS:
            reason = reason[:_REASON_CHARS - 1] + "…"
        self.compiled, self.compile_error = False, reason
        log.warning("training.compile: torch.compile failed, the run trains eagerly: %s",
                    reason)

    def notes(self) -> list[str]:
        """What the device string adds: ``channels_last``, ``compiled`` or why not."""
        notes = ["channels_last"] if self.channels_last else []
        if self.compile_error is not None:
            notes.append(f"compile failed: {self.compile_error} (eager)")
        elif self.compiled:
            notes.append("compiled")
        return notes


def align_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout of its parameters: a resume
    point stores it contiguous, and fused CUDA kernels need every tensor of a
    parameter (its momentum, Adam's moments) in the parameter's strides."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == p.shape
                        and value.stride() != p.stride()):
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
