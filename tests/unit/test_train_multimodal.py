"""Training multimodal models end to end on a small synthetic dataset (CPU)."""

import json
import math

import pytest
import torch

from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec, build_model
from app.ml.training import TrainHooks, TrainSpec, train
from tests.recipes import SHORT

FUSIONS = ["early", "late", "attention", "tensor", "gated"]
MIXES = {
    "mixup": MixSpec("mixup"),
    "cross_modal": MixSpec("cross_modal", ops={"image": "cutmix", "text": "token_cutmix",
                                               "audio": "specmix"}),
    "manifold": MixSpec("manifold_mixup", manifold_layers=(0, 1, 2)),
}
MODALITIES = ("image", "text", "audio", "tabular")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return load_synthetic(num_samples=300, image_size=8, text_length=8, audio_bins=8,
                          audio_frames=8)


def _spec(fusion: str, **kw) -> ModelSpec:
    return ModelSpec(kind="multimodal", fusion=fusion, dim=8, width=4, depth=1, text_dim=8,
                     heads=2, **kw)


@pytest.mark.parametrize("mix_name", list(MIXES))
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_trains_with_every_mix(data, fusion, mix_name):
    text = "transformer" if fusion == "attention" else "mean"
    result = train(data, _spec(fusion, text_encoder=text, modality_dropout=0.2),
                   MIXES[mix_name], TrainSpec(epochs=1, batch_size=32, device="cpu"))
    assert result.status == "completed"
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    for m in MODALITIES:
        assert 0.0 <= result.metrics[f"test_acc_without_{m}"] <= 1.0
    assert 0.0 <= result.metrics["test_acc_noise"] <= 1.0


class Checkpoints(TrainHooks):
    def __init__(self) -> None:
        self.saved: list[tuple[dict[str, torch.Tensor], dict[str, str]]] = []

    def on_checkpoint(self, epoch, tensors, metadata) -> None:
        self.saved.append((tensors, metadata))


def test_checkpoint_rebuilds_the_multimodal_model(data):
    hooks = Checkpoints()
    spec = _spec("attention")
    train(data, spec, MixSpec("mixup"), TrainSpec(epochs=1, batch_size=64, device="cpu"), hooks)
    tensors, meta = hooks.saved[-1]
    assert ModelSpec(**json.loads(meta["model_spec"])) == spec
    shapes = {m: tuple(s) for m, s in json.loads(meta["input_shapes"]).items()}
    model = build_model(spec, shapes, len(json.loads(meta["class_names"])),
                        kinds=json.loads(meta["modality_kinds"]),
                        vocab_sizes=json.loads(meta["vocab_sizes"]))
    model.load_state_dict(tensors, strict=True)


def test_same_seed_same_metrics(data):
    spec, ts = _spec("gated", modality_dropout=0.3), TrainSpec(epochs=1, batch_size=32,
                                                                 device="cpu")
    a = train(data, spec, MIXES["cross_modal"], ts).metrics
    torch.rand(1)
    b = train(data, spec, MIXES["cross_modal"], ts).metrics
    a.pop("train_time_s"), b.pop("train_time_s")
    assert a == b


def test_early_fusion_learns(data):
    result = train(data, ModelSpec(kind="multimodal", fusion="early", dim=16, width=8, depth=2,
                                   text_dim=16),
                   MixSpec("mixup"), TrainSpec(epochs=6, batch_size=32, device="cpu", **SHORT))
    assert result.metrics["val_acc"] > 0.6, result.metrics
    assert result.metrics["test_acc"] > 0.6, result.metrics


def test_multimodal_on_a_dataset_without_images():
    ds = load_synthetic(num_samples=200, modalities=("text", "tabular"), text_length=8)
    result = train(ds, _spec("late"), MixSpec("mixup"),
                   TrainSpec(epochs=1, batch_size=32, device="cpu"))
    assert set(result.metrics) >= {"test_acc_without_text", "test_acc_without_tabular"}
