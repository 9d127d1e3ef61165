"""No host–device synchronisation inside a training step, only at metric flushes.

On every machine the steps run under ``ScalarReads`` (``tests/syncs.py``),
which records each op that would make the host wait for a GPU; on CUDA they
also run under ``torch.cuda.set_sync_debug_mode("error")``, where any
synchronising call raises. Both watch the steps only (``StepWindows``):
validation, the epoch's one read of the metrics and the checkpoint may sync.
"""

import contextlib
import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from app.ml.data import PreparedDataset, load_digits
from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.retrieval import train_retrieval
from app.ml.training import TrainSpec, batches, train
from app.ml.training.classify import ClassifierObjective
from app.ml.training.clock import StepPlan
from app.ml.training.recipe import WeightAverage
from tests.syncs import ScalarReads, StepWindows

EPOCHS, BATCH = 2, 64
SMALL = ModelSpec(width=4, depth=2)
MULTIMODAL = ModelSpec(kind="multimodal", fusion="attention", dim=8, width=4, depth=1,
                       text_dim=8, heads=2, text_encoder="transformer", modality_dropout=0.2)
TOWERS = ModelSpec(kind="multimodal", dim=8, text_dim=8, width=4, depth=1)
# (model, mixing, recipe overrides): every mixing method, and the recipe's
# per-step parts (clipping, the weight average, AdamW, augmentation, off epochs)
CASES = {
    "mixup": (SMALL, MixSpec("mixup", alpha=0.4), {}),
    "cutmix": (SMALL, MixSpec("cutmix"), {"augment": ("crop", "flip")}),
    "mixup_cutmix, ema, clip": (SMALL, MixSpec("mixup_cutmix", lam_mode="sample",
                                               label_smoothing=0.1, prob=0.8),
                                {"ema": 0.9, "grad_clip": 1.0}),
    "manifold, adamw, off epoch": (SMALL, MixSpec("manifold_mixup", off_epoch=1),
                                   {"optimizer": "adamw"}),
    "multimodal cross_modal": (MULTIMODAL, MixSpec("cross_modal", ops={
        "image": "cutmix", "text": "token_cutmix", "audio": "specmix"}), {"ema": 0.99}),
    # two towers (app.ml.retrieval), image → text
    "retrieval m3mix": (TOWERS, MixSpec("m3mix"), {}),
    "retrieval mixgen": (TOWERS, MixSpec("mixgen"), {"grad_clip": 1.0}),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


@pytest.fixture(scope="module")
def synthetic() -> PreparedDataset:
    return load_synthetic(num_samples=400, image_size=8, text_length=8, audio_bins=8,
                          audio_frames=8)


def _data(case: str, digits: PreparedDataset, synthetic: PreparedDataset) -> PreparedDataset:
    return synthetic if CASES[case][0].kind == "multimodal" else digits


def _windows(data: PreparedDataset, switch: Callable[[bool], None]) -> StepWindows:
    plan = StepPlan.of(int((data.split == 0).sum()), BATCH, EPOCHS)
    return StepWindows(switch, plan.steps_per_epoch, EPOCHS)


def _train(data: PreparedDataset, case: str, device: str, hooks: StepWindows) -> None:
    model, mix_spec, recipe = CASES[case]
    spec = TrainSpec(epochs=EPOCHS, batch_size=BATCH, device=device, **recipe)
    if case.startswith("retrieval"):
        result = train_retrieval(data, model, mix_spec, spec, hooks, query="image", target="text")
    else:
        result = train(data, model, mix_spec, spec, hooks)
    assert result.status == "completed"
    assert hooks.steps == EPOCHS * hooks.steps_per_epoch


def _watched(data: PreparedDataset, case: str) -> tuple[ScalarReads, StepWindows]:
    reads = ScalarReads()

    def switch(on: bool) -> None:
        reads.active = on

    hooks = _windows(data, switch)
    with reads:
        _train(data, case, "cpu", hooks)
    return reads, hooks


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_read_nothing_back(digits, synthetic, case):
    reads, _ = _watched(_data(case, digits, synthetic), case)
    found = reads.device_reads()
    assert not found, "reads inside a step:\n" + "\n".join(
        f"{r.op} at {r.where} ({r.origin})\n{r.stack}" for r in found[:3])


def test_the_recorder_sees_host_reads_and_a_read_in_a_step(digits, monkeypatch):
    # the CPU-only reads are seen (and classed as host reads) ...
    reads, _ = _watched(digits, "cutmix")
    assert reads.reads and all(r.on_host for r in reads.reads)
    # ... and so is a value read back inside a step, e.g. to log the loss
    original = ClassifierObjective.train_loss

    def logging_loss(self, idx, epoch, generators):  # type: ignore[no-untyped-def]
        loss = original(self, idx, epoch, generators)
        self.last = float(loss.detach())
        return loss

    monkeypatch.setattr(ClassifierObjective, "train_loss", logging_loss)
    reads, hooks = _watched(digits, "mixup")
    assert len(reads.device_reads()) == hooks.steps


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.LazyLinear(3))
    model(torch.randn(2, 1, 5, 5))
    return model, copy.deepcopy(model)


def test_weight_average_matches_torchs_ema_bit_for_bit():
    model, _ = _models()
    ours = WeightAverage(model, 0.9)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        model.train()
        model(torch.randn(8, 1, 5, 5, generator=torch.Generator().manual_seed(step))).sum() \
            .backward()
        optimizer.step()
        ours.update_parameters(model)
        theirs.update_parameters(model)
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(),
                                strict=True):
            assert torch.equal(a, b), (step, name)
    # a resumed average picks its count up from the state it loads
    resumed = WeightAverage(model, 0.9)
    resumed.load_state_dict(theirs.state_dict())
    resumed.update_parameters(model)
    theirs.update_parameters(model)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(),
                                                 theirs.state_dict().values(), strict=True))
    assert int(resumed.n_averaged) == 5


# --- CUDA: the sync debug mode raises on every synchronising call ---------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@contextlib.contextmanager
def _cuda_watch() -> Iterator[tuple[ScalarReads, Callable[[bool], None]]]:
    """Inside the steps: CUDA's sync debug mode raises, and the recorder watches
    for pageable copies and reads of host tensors the debug mode cannot see."""
    reads = ScalarReads()

    def switch(on: bool) -> None:
        torch.cuda.set_sync_debug_mode("error" if on else "default")
        reads.active = on

    try:
        with reads:
            yield reads, switch
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_training_steps_never_sync(digits, synthetic, case):
    data = _data(case, digits, synthetic)
    with _cuda_watch() as (reads, switch):
        hooks = _windows(data, switch)
        _train(data, case, "cuda", hooks)
    assert hooks.starts[0].startswith("cuda")
    assert not reads.device_reads(), [(r.op, r.where) for r in reads.device_reads()[:5]]


@pytest.mark.cuda
@cuda
def test_cuda_steps_from_host_memory_copy_asynchronously(digits, monkeypatch):
    """Data that does not fit on the GPU stays on the host; its batches go
    through pinned memory, so every copy of a step is asynchronous."""
    monkeypatch.setattr(batches, "GPU_RESIDENT_SHARE", 0.0)
    with _cuda_watch() as (reads, switch):
        hooks = _windows(digits, switch)
        _train(digits, "mixup_cutmix, ema, clip", "cuda", hooks)
    assert not reads.device_reads(), [(r.op, r.where) for r in reads.device_reads()[:5]]


@pytest.mark.cuda
@cuda
@pytest.mark.xfail(strict=False, reason="torch's CUDA embedding backward reads the number of "
                   "unique ids back once a batch holds more than 3,072 token ids (its sort path)")
def test_cuda_long_texts_in_a_step(monkeypatch):
    """Not mixlab's code: what torch's own kernels do with a batch of 64 texts of 64
    tokens (4,096 ids). Recorded so a GPU run says whether it holds."""
    data = load_synthetic(num_samples=400, image_size=8, text_length=64, audio_bins=8,
                          audio_frames=8)
    with _cuda_watch() as (_, switch):
        hooks = _windows(data, switch)
        _train(data, "multimodal cross_modal", "cuda", hooks)
