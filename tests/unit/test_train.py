"""Unit tests for app.ml.train on the built-in digits (CPU, tiny model)."""

import json
import math

import pytest
import torch

from app.ml.data import PreparedDataset, load_digits
from app.ml.device import DeviceUnavailableError, resolve_device
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec, build_model
from app.ml.training import Progress, TrainHooks, TrainSpec, evaluate, train
from app.ml.training.normalization import fit
from tests.recipes import SHORT

MODEL = ModelSpec(width=8, depth=2)
EPOCHS, BATCH = 2, 128
EPOCH_KEYS = {"train_loss", "val_loss", "val_acc", "val_ece", "val_f1_macro", "val_brier"}


class Recorder(TrainHooks):
    def __init__(self, stop_after: int | None = None) -> None:
        self.starts: list[tuple[str, int]] = []
        self.progress: list[Progress] = []
        self.epochs: list[tuple[int, int, dict[str, float]]] = []
        # a snapshot (cloned when the hook is called) and the tensors as handed over
        self.checkpoints: list[tuple[int, dict[str, torch.Tensor], dict[str, str]]] = []
        self.raw_checkpoints: list[dict[str, torch.Tensor]] = []
        self.stop_after = stop_after

    def on_start(self, device: str, total_steps: int) -> None:
        self.starts.append((device, total_steps))

    def on_progress(self, progress: Progress) -> None:
        self.progress.append(progress)

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, step, dict(metrics)))

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        self.checkpoints.append((epoch, {k: v.clone() for k, v in tensors.items()},
                                 dict(metadata)))
        self.raw_checkpoints.append(tensors)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.progress) >= self.stop_after


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


@pytest.fixture(scope="module")
def run(digits):
    hooks = Recorder()
    spec = TrainSpec(epochs=EPOCHS, batch_size=BATCH, seed=0, device="cpu", **SHORT)
    result = train(digits, MODEL, MixSpec("mixup", alpha=0.4), spec, hooks)
    return result, hooks


def small_subset(ds: PreparedDataset, n_train: int, n_eval: int = 20) -> PreparedDataset:
    """The first n_train + 2 * n_eval digits, split train / val / test in that order."""
    n = n_train + 2 * n_eval
    split = torch.tensor([0] * n_train + [1] * n_eval + [2] * n_eval, dtype=torch.uint8)
    return PreparedDataset(inputs={"image": ds.inputs["image"][:n]}, labels=ds.labels[:n],
                           clean_labels=ds.clean_labels[:n], split=split,
                           class_names=ds.class_names, modality_kinds=ds.modality_kinds)


def steps_per_epoch(ds: PreparedDataset, batch: int = BATCH) -> int:
    return math.ceil(len(ds.split_indices("train")) / batch)


def test_train_completes_and_reports_metrics(run, digits):
    result, _ = run
    assert result.status == "completed"
    assert result.epochs_completed == EPOCHS
    assert result.steps == EPOCHS * steps_per_epoch(digits)
    assert result.device.startswith("cpu")
    for key in EPOCH_KEYS | {"test_loss", "test_acc", "test_ece", "train_time_s"}:
        assert key in result.metrics, key
        assert math.isfinite(result.metrics[key])
    assert 0.0 <= result.metrics["test_acc"] <= 1.0
    assert 0.0 <= result.metrics["test_ece"] <= 1.0
    # two epochs of a small CNN on digits learns something (chance is 0.1)
    assert result.metrics["test_acc"] > 0.3
    assert result.metrics["train_time_s"] > 0


def test_train_hooks_on_start_and_progress(run, digits):
    result, hooks = run
    total = EPOCHS * steps_per_epoch(digits)
    assert hooks.starts == [(result.device, total)]
    assert [p.step for p in hooks.progress] == list(range(1, total + 1))
    assert all(p.total_steps == total for p in hooks.progress)
    spe = steps_per_epoch(digits)
    assert [p.epoch for p in hooks.progress] == [1] * spe + [2] * spe
    assert all(p.samples_per_s >= 0 and p.eta_s >= 0 for p in hooks.progress)
    assert hooks.progress[-1].eta_s == pytest.approx(0.0, abs=1e-9)


def test_train_hooks_on_epoch_end(run, digits):
    result, hooks = run
    spe = steps_per_epoch(digits)
    assert [(e, s) for e, s, _ in hooks.epochs] == [(1, spe), (2, 2 * spe)]
    for _, _, metrics in hooks.epochs:
        assert set(metrics) == EPOCH_KEYS
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
        assert 0.0 <= metrics["val_acc"] <= 1.0
    # the final metrics carry the last epoch's numbers
    for key in EPOCH_KEYS:
        assert result.metrics[key] == hooks.epochs[-1][2][key]


def test_train_checkpoints_load_into_a_fresh_model(run, digits):
    result, hooks = run
    # one per epoch, then the run's own (the kept model: the last epoch's by default)
    assert [c[0] for c in hooks.checkpoints] == [1, 2, 2]
    for epoch, tensors, meta in hooks.checkpoints:
        assert meta["epoch"] == str(epoch)
        assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())
        spec = ModelSpec(**json.loads(meta["model_spec"]))
        assert spec == MODEL
        shape = tuple(json.loads(meta["input_shape"]))
        assert shape == (1, 8, 8)
        names = json.loads(meta["class_names"])
        assert names == digits.class_names
        model = build_model(spec, shape, len(names))
        model.load_state_dict(tensors, strict=True)

    first, last = hooks.checkpoints[0][1], hooks.checkpoints[-1][1]
    assert any(not torch.equal(first[k], last[k]) for k in first if first[k].is_floating_point())

    # the last checkpoint is the model that produced the reported test metrics
    model = build_model(MODEL, (1, 8, 8), digits.num_classes)
    model.load_state_dict(last)
    cpu = torch.device("cpu")
    images, labels = digits.inputs["image"], digits.labels
    train_idx, test_idx = digits.split_indices("train"), digits.split_indices("test")
    normalize = fit("image", images[train_idx], cpu)
    metrics = evaluate(model, images[test_idx], labels[test_idx], normalize, cpu, 1024, None)
    assert float(metrics["acc"]) == pytest.approx(result.metrics["test_acc"], abs=1e-6)
    assert float(metrics["loss"]) == pytest.approx(result.metrics["test_loss"], rel=1e-4)


def test_checkpoint_tensors_are_snapshots(run):
    _, hooks = run
    snapshot = hooks.checkpoints[0][1]
    handed_over = hooks.raw_checkpoints[0]
    for key, value in snapshot.items():
        assert torch.equal(handed_over[key], value), key


@pytest.mark.parametrize("stop_after", [0, 3])
def test_should_stop_stops_in_the_first_epoch(digits, stop_after):
    hooks = Recorder(stop_after=stop_after)
    result = train(digits, MODEL, MixSpec("mixup"),
                   TrainSpec(epochs=EPOCHS, batch_size=BATCH, device="cpu"), hooks)
    assert result.status == "stopped"
    assert result.steps == stop_after
    assert len(hooks.progress) == stop_after
    assert result.epochs_completed == 0
    assert hooks.epochs == [] and hooks.checkpoints == []
    assert result.metrics == {}


def test_should_stop_in_the_second_epoch_keeps_first_epoch_metrics(digits):
    small = small_subset(digits, 160)
    spe = steps_per_epoch(small, 32)
    hooks = Recorder(stop_after=spe + 2)
    result = train(small, MODEL, MixSpec("cutmix", lam_mode="sample"),
                   TrainSpec(epochs=3, batch_size=32, device="cpu"), hooks)
    assert result.status == "stopped"
    assert result.steps == spe + 2
    assert result.epochs_completed == 1
    assert len(hooks.checkpoints) == 1
    assert result.metrics == hooks.epochs[0][2]
    assert "test_acc" not in result.metrics


def test_same_seed_same_metrics(digits, run):
    result, _ = run
    again = train(digits, MODEL, MixSpec("mixup", alpha=0.4),
                  TrainSpec(epochs=EPOCHS, batch_size=BATCH, seed=0, device="cpu", **SHORT))
    a = {k: v for k, v in result.metrics.items() if k != "train_time_s"}
    b = {k: v for k, v in again.metrics.items() if k != "train_time_s"}
    assert a == b


def test_different_seed_different_metrics(digits, run):
    result, _ = run
    other = train(digits, MODEL, MixSpec("mixup", alpha=0.4),
                  TrainSpec(epochs=1, batch_size=BATCH, seed=1, device="cpu"))
    assert other.metrics["train_loss"] != result.metrics["train_loss"]


def test_same_seed_same_metrics_with_dropout(digits):
    small = small_subset(digits, 64)
    model = ModelSpec(width=8, depth=2, dropout=0.5)
    spec = TrainSpec(epochs=1, batch_size=16, seed=3, device="cpu")
    a = train(small, model, MixSpec("mixup"), spec).metrics
    torch.rand(1)  # anything else in the process that uses the global RNG
    b = train(small, model, MixSpec("mixup"), spec).metrics
    assert a["train_loss"] == b["train_loss"]


def test_last_batch_of_one_sample_trains(digits):
    small = small_subset(digits, 2 * 16 + 1)  # batches of 16, 16 and 1
    result = train(small, ModelSpec(width=4, depth=4), MixSpec("mixup"),
                   TrainSpec(epochs=1, batch_size=16, device="cpu"))
    assert result.status == "completed"


def test_train_with_float_images_and_no_mixing(digits):
    # float32 images and the 'none' method go through the same loop
    small = small_subset(digits, 200)
    ds = PreparedDataset(
        inputs={"image": small.inputs["image"].float() / 255.0},
        labels=small.labels, clean_labels=small.clean_labels, split=small.split,
        class_names=small.class_names, modality_kinds=small.modality_kinds)
    hooks = Recorder()
    result = train(ds, MODEL, MixSpec("none"), TrainSpec(epochs=2, batch_size=32,
                                                          device="cpu"), hooks)
    assert result.status == "completed"
    assert result.steps == 2 * 7
    assert all(math.isfinite(v) for v in result.metrics.values())
    # without mixing the targets are one-hot, so the loss falls quickly
    assert hooks.epochs[1][2]["train_loss"] < hooks.epochs[0][2]["train_loss"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_on_a_cpu_only_machine_raises(digits, device):
    hooks = Recorder()
    with pytest.raises(DeviceUnavailableError):
        train(digits, MODEL, MixSpec("mixup"), TrainSpec(epochs=1, device=device), hooks)
    assert hooks.starts == []


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceUnavailableError):
        resolve_device("meta")
