"""Resuming a run from a resume point gives the run that was never interrupted."""

import pytest
import torch

from app.ml.data import PreparedDataset, load_digits, load_synthetic
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.resume import ResumePoint, from_bytes, to_bytes
from app.ml.training import TrainHooks, TrainSpec, train


class Saver(TrainHooks):
    """Keeps every resume point, as bytes (what the worker stores), and can stop
    the run after a given epoch, as a worker that dies would."""

    wants_resume_points = True

    def __init__(self, stop_after_epoch: int | None = None) -> None:
        self.points: dict[int, bytes] = {}
        self.epochs: list[tuple[int, int, dict[str, float]]] = []
        self.stop_after_epoch = stop_after_epoch

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, step, metrics))

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str], resume: ResumePoint | None = None) -> None:
        assert resume is not None and resume.epoch == epoch
        self.points[epoch] = to_bytes(resume)

    def should_stop(self) -> bool:
        return self.stop_after_epoch is not None and bool(self.epochs) and \
            self.epochs[-1][0] >= self.stop_after_epoch


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


CASES = {
    "cnn mixup": (ModelSpec(width=8, depth=2, dropout=0.2), MixSpec("mixup", alpha=0.4)),
    "cnn cutmix": (ModelSpec(width=8, depth=2), MixSpec("mixup_cutmix", alpha=1.0,
                                                        cutmix_alpha=1.0)),
    "cnn manifold": (ModelSpec(width=8, depth=2), MixSpec("manifold_mixup", alpha=2.0,
                                                          manifold_layers=(0, 1, 2))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_run_equals_the_uninterrupted_one(digits, case):
    model, mixing = CASES[case]
    spec = TrainSpec(epochs=4, batch_size=256, seed=3, device="cpu")
    whole_hooks = Saver()
    whole = train(digits, model, mixing, spec, whole_hooks)
    whole_weights = from_bytes(whole_hooks.points[4]).model

    first = Saver(stop_after_epoch=2)
    stopped = train(digits, model, mixing, spec, first)
    assert stopped.status == "stopped" and stopped.epochs_completed == 2
    second = Saver()
    resumed = train(digits, model, mixing, spec, second, resume=from_bytes(first.points[2]))

    assert resumed.status == "completed"
    assert resumed.steps == whole.steps
    assert [e for e, _, _ in second.epochs] == [3, 4]  # epochs 1-2 are not trained again
    assert resumed.metrics == {**whole.metrics, "train_time_s": resumed.metrics["train_time_s"]}
    # and the weights at the end are the same, bit for bit
    for name, value in from_bytes(second.points[4]).model.items():
        assert torch.equal(value, whole_weights[name]), name


def test_a_multimodal_run_resumes_exactly():
    data = load_synthetic(num_samples=300, num_classes=3, seed=1,
                          modalities=("image", "text", "tabular"))
    model = ModelSpec(kind="multimodal", fusion="attention", dim=16, text_dim=16, heads=2,
                      modality_dropout=0.2)
    mixing = MixSpec("cross_modal", alpha=1.0)
    spec = TrainSpec(epochs=3, batch_size=64, seed=0, device="cpu")
    whole = train(data, model, mixing, spec, Saver())
    first = Saver(stop_after_epoch=1)
    train(data, model, mixing, spec, first)
    resumed = train(data, model, mixing, spec, Saver(), resume=from_bytes(first.points[1]))
    assert resumed.metrics == {**whole.metrics, "train_time_s": resumed.metrics["train_time_s"]}


def test_resuming_after_the_last_epoch_only_evaluates(digits):
    spec = TrainSpec(epochs=2, batch_size=256, seed=0, device="cpu")
    model, mixing = ModelSpec(width=8, depth=2), MixSpec("mixup")
    hooks = Saver()
    whole = train(digits, model, mixing, spec, hooks)
    again = Saver()
    resumed = train(digits, model, mixing, spec, again, resume=from_bytes(hooks.points[2]))
    assert again.epochs == []
    assert resumed.metrics == {**whole.metrics, "train_time_s": resumed.metrics["train_time_s"]}


@pytest.mark.parametrize("method", ["m3mix", "mixgen"])
def test_a_retrieval_run_resumes_exactly(method):
    from app.ml.retrieval import train_retrieval

    data = load_synthetic(num_samples=240, num_classes=3, seed=2,
                          modalities=("image", "text"))
    model = ModelSpec(kind="multimodal", dim=16, text_dim=16, width=4, depth=1)
    mixing = MixSpec(method, alpha=1.0)
    spec = TrainSpec(epochs=3, batch_size=32, seed=0, device="cpu")
    pair = {"query": "image", "target": "text"}
    whole = train_retrieval(data, model, mixing, spec, Saver(), **pair)
    first = Saver(stop_after_epoch=1)
    train_retrieval(data, model, mixing, spec, first, **pair)
    second = Saver()
    resumed = train_retrieval(data, model, mixing, spec, second, **pair,
                              resume=from_bytes(first.points[1]))
    assert [e for e, _, _ in second.epochs] == [2, 3]
    assert resumed.metrics == {**whole.metrics, "train_time_s": resumed.metrics["train_time_s"]}
