"""The GPU path's speed-ups (``app.ml.training.fast``): ``training.compile`` with
its fallback to eager, channels_last for conv nets on CUDA, and optimizer state
that keeps its parameters' layout across a resume.

Compiling for real is slow on a small CPU, so one test compiles a tiny model
with Inductor (where a C++ compiler is present); the fallback tests use
backends that fail on purpose.
"""

import logging
import shutil

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from app.ml.data import PreparedDataset, load_digits
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.resume import from_bytes, to_bytes
from app.ml.training import TrainHooks, TrainResult, TrainSpec, fast, train
from app.ml.training.fast import align_optimizer_state
from tests.recipes import SHORT

MODEL = ModelSpec(width=4, depth=2)
MIXING = MixSpec("mixup", alpha=0.4)
LOGGER = "app.ml.training.fast"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Starts(TrainHooks):
    def __init__(self) -> None:
        self.devices: list[str] = []

    def on_start(self, device: str, total_steps: int) -> None:
        self.devices.append(device)


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


def subset(data: PreparedDataset, n_train: int, n_eval: int) -> PreparedDataset:
    """The first ``n_train`` train rows and ``n_eval`` val and test rows."""
    keep = torch.cat([data.split_indices("train")[:n_train], data.split_indices("val")[:n_eval],
                      data.split_indices("test")[:n_eval]])
    return PreparedDataset(inputs={k: v[keep] for k, v in data.inputs.items()},
                           labels=data.labels[keep], clean_labels=data.clean_labels[keep],
                           split=data.split[keep], class_names=data.class_names,
                           modality_kinds=data.modality_kinds)


def _train(data: PreparedDataset, compile: bool, device: str = "cpu", epochs: int = 2,
           model: ModelSpec = MODEL) -> tuple[TrainResult, Starts]:
    hooks = Starts()
    spec = TrainSpec(epochs=epochs, batch_size=64, seed=1, device=device, compile=compile,
                     **SHORT)
    return train(data, model, MIXING, spec, hooks), hooks


def _without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "train_time_s"}


def _raise(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
    raise RuntimeError("no compiler on this worker")


def test_compile_is_off_by_default_and_the_device_string_plain(digits):
    result, hooks = _train(subset(digits, 128, 64), compile=False, epochs=1)
    assert TrainSpec().compile is False
    assert hooks.devices == [result.device]
    assert "compile" not in result.device and "channels_last" not in result.device  # CPU


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_worker_that_cannot_compile_trains_eagerly_and_says_so(digits, monkeypatch,
                                                                 caplog, where):
    # a backend that raises when asked for the forward graph, or (through
    # AOTAutograd) for the backward one, which is compiled when backward runs
    backend = _raise if where == "forward" else aot_autograd(
        fw_compiler=lambda gm, inputs: gm.forward, bw_compiler=_raise)
    monkeypatch.setattr(fast, "COMPILE_BACKEND", backend)
    eager, _ = _train(digits, compile=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result, hooks = _train(digits, compile=True)

    assert result.status == "completed"
    # the run started eager and said so: the device string the worker records at the start
    assert hooks.devices == [result.device]
    assert "compile failed: " in result.device and result.device.endswith("(eager))")
    assert "no compiler on this worker" in result.device
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "trains eagerly" in warnings[0].getMessage()
    # the probe step left nothing behind: the run is the eager run, figure for figure
    assert _without_time(result.metrics) == _without_time(eager.metrics)


def test_a_compile_that_fails_mid_run_falls_back_for_the_rest(digits, monkeypatch, caplog):
    """The first graph compiles; the last batch of an epoch (1,259 rows, batch 64:
    43 rows) needs another, which fails: that step and the rest run eagerly."""
    calls = []

    def second_fails(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        calls.append(len(inputs))
        if len(calls) > 1:
            raise RuntimeError("out of compiler memory")
        return gm.forward

    monkeypatch.setattr(fast, "COMPILE_BACKEND", second_fails)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result, hooks = _train(digits, compile=True, epochs=1)
    assert result.status == "completed" and len(calls) == 2
    assert hooks.devices[0].endswith(", compiled)")
    assert "compile failed: " in result.device and "out of compiler memory" in result.device
    assert any("trains eagerly" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="Inductor needs a C++ compiler on CPU")
def test_a_compiled_run_matches_the_eager_one(digits, tmp_path, monkeypatch):
    # 256 training rows in batches of 64: one batch shape, one compile (slow on CPU)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    data = subset(digits, 256, 128)
    eager, _ = _train(data, compile=False)
    compiled, hooks = _train(data, compile=True)
    assert hooks.devices == [compiled.device] and compiled.device.endswith(", compiled)")
    for key, value in _without_time(eager.metrics).items():
        assert compiled.metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
    assert any((tmp_path / "inductor").iterdir())  # the cache is where the worker keeps it


def test_keep_compile_cache_leaves_an_operators_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    fast.keep_compile_cache(tmp_path / "a")
    fast.keep_compile_cache(tmp_path / "b")
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "a")


def test_loaded_optimizer_state_takes_its_parameters_layout():
    """A resume point stores momentum contiguous; a channels_last parameter needs
    its momentum channels_last too (fused CUDA kernels walk them in step)."""
    conv = torch.nn.Conv2d(2, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    conv(torch.randn(2, 2, 5, 5)).sum().backward()
    optimizer.step()
    state = {k: v for k, v in optimizer.state_dict().items()}
    state["state"] = {i: {k: v.contiguous() for k, v in s.items()}
                      for i, s in state["state"].items()}
    again = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    again.load_state_dict(state)
    assert again.state[conv.weight]["momentum_buffer"].stride() != conv.weight.stride()
    align_optimizer_state(again)
    momentum = again.state[conv.weight]["momentum_buffer"]
    assert momentum.stride() == conv.weight.stride()
    assert torch.equal(momentum, optimizer.state[conv.weight]["momentum_buffer"])


# --- CUDA -------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Points(TrainHooks):
    wants_resume_points = True

    def __init__(self, stop_after_epoch: int | None = None) -> None:
        self.points: dict[int, bytes] = {}
        self.stop_after_epoch = stop_after_epoch
        self.devices: list[str] = []

    def on_start(self, device: str, total_steps: int) -> None:
        self.devices.append(device)

    def on_checkpoint(self, epoch, tensors, metadata, resume=None) -> None:  # type: ignore[no-untyped-def]
        self.points[epoch] = to_bytes(resume)

    def should_stop(self) -> bool:
        return self.stop_after_epoch is not None and self.stop_after_epoch in self.points


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_cuda_conv_nets_train_channels_last_and_resume_exactly(digits, optimizer):
    spec = TrainSpec(epochs=3, batch_size=128, seed=2, device="cuda", optimizer=optimizer,
                     lr=0.05 if optimizer == "sgd" else 3e-3, ema=0.9)
    model = ModelSpec(kind="preact_resnet18", width=8)
    whole_hooks = Points()
    whole = train(digits, model, MIXING, spec, whole_hooks)
    assert "channels_last" in whole.device and whole_hooks.devices == [whole.device]
    assert whole.metrics["test_acc"] > 0.5
    first = Points(stop_after_epoch=1)
    train(digits, model, MIXING, spec, first)
    resumed = train(digits, model, MIXING, spec, Points(),
                    resume=from_bytes(first.points[1]))
    # fused kernels and channels_last after a resume from contiguous state: the
    # same figures (bf16 kernels need not repeat bit for bit, so within noise)
    for key in ("test_acc", "val_acc"):
        assert resumed.metrics[key] == pytest.approx(whole.metrics[key], abs=0.02), key


@pytest.mark.cuda
@cuda
def test_cuda_compiled_run_matches_the_eager_one(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    data = subset(digits, 1024, 256)
    model = ModelSpec(kind="preact_resnet18", width=8)
    eager, _ = _train(data, compile=False, device="cuda", epochs=3, model=model)
    compiled, hooks = _train(data, compile=True, device="cuda", epochs=3, model=model)
    assert hooks.devices == [compiled.device]
    assert compiled.device.endswith("channels_last, compiled)"), compiled.device
    assert compiled.metrics["test_acc"] == pytest.approx(eager.metrics["test_acc"], abs=0.05)
    assert compiled.metrics["train_loss"] == pytest.approx(eager.metrics["train_loss"],
                                                           rel=0.1)
