"""Training beyond single-label classification: the multilabel task, temperature
scaling, missing modalities and categorical tabular columns (CPU, tiny data)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from app.ml.checkpoint import load_model
from app.ml.data import PreparedDataset, load_digits
from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec, TabularEncoder
from app.ml.training import TrainHooks, TrainSpec, evaluate, train
from app.ml.training.normalization import fit as _normalizer_for
from tests.recipes import SHORT

FUSIONS = ["early", "late", "attention", "tensor", "gated"]
SMALL = {"num_samples": 300, "image_size": 8, "text_length": 8, "audio_bins": 8,
         "audio_frames": 8}
MULTILABEL_KEYS = {"loss", "map", "f1_micro", "f1_macro", "subset_acc", "ece", "brier"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Checkpoints(TrainHooks):
    def __init__(self) -> None:
        self.starts = 0
        self.saved: list[tuple[dict[str, torch.Tensor], dict[str, str]]] = []

    def on_start(self, device, total_steps) -> None:
        self.starts += 1

    def on_checkpoint(self, epoch, tensors, metadata) -> None:
        self.saved.append((tensors, dict(metadata)))


def _mm(fusion: str = "early", **kw) -> ModelSpec:
    return ModelSpec(kind="multimodal", fusion=fusion, dim=8, width=4, depth=1, text_dim=8,
                     heads=2, **kw)


def _fast(epochs: int = 1, **kw) -> TrainSpec:
    return TrainSpec(epochs=epochs, batch_size=32, device="cpu", **{**SHORT, **kw})


def _without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "train_time_s"}


# ---------------------------------------------------------------------- multilabel


@pytest.fixture(scope="module")
def tags() -> PreparedDataset:
    return load_synthetic(**{**SMALL, "num_samples": 400, "image_size": 12},
                          modalities=("image",), labels_per_sample=2)


def test_multilabel_cnn_learns_and_reports_map(tags):
    hooks = Checkpoints()
    result = train(tags, ModelSpec(width=8, depth=2), MixSpec("mixup", label_smoothing=0.1),
                   _fast(epochs=4), hooks, task="multilabel")
    m = result.metrics
    assert {f"val_{k}" for k in MULTILABEL_KEYS} | {f"test_{k}" for k in MULTILABEL_KEYS} \
        <= set(m)
    assert "test_acc" not in m and all(math.isfinite(v) for v in m.values())
    # chance mAP is about the share of positives (0.38 here)
    assert m["test_map"] > 0.8 and m["test_f1_micro"] > 0.6, m
    report = result.report
    assert report is not None and report["task"] == "multilabel"
    aps = [row["ap"] for row in report["per_class"] if row["ap"] is not None]
    assert sum(aps) / len(aps) == pytest.approx(m["test_map"], abs=1e-5)
    assert hooks.saved[-1][1]["task"] == "multilabel"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_multilabel_every_fusion_with_missing_modalities(fusion):
    ds = load_synthetic(**SMALL, labels_per_sample=2, missing_rate=0.3)
    text = "transformer" if fusion == "attention" else "mean"
    result = train(ds, _mm(fusion, text_encoder=text), MixSpec("mixup"), _fast(),
                   task="multilabel")
    m = result.metrics
    assert all(math.isfinite(v) for v in m.values()), m
    for name in ds.inputs:  # robustness uses the task's headline metric
        assert 0.0 <= m[f"test_map_without_{name}"] <= 1.0
    assert 0.0 <= m["test_map_noise"] <= 1.0


def test_multilabel_late_fusion_can_predict_a_class():
    # log-probabilities would keep every sigmoid below 1/2: late fusion pools logits instead
    ds = load_synthetic(**SMALL, labels_per_sample=3, modalities=("image", "tabular"))
    result = train(ds, _mm("late"), MixSpec("none"), _fast(epochs=3), task="multilabel")
    assert result.metrics["test_f1_micro"] > 0.5


def test_the_task_must_fit_the_labels(tags):
    hooks = Checkpoints()
    with pytest.raises(ValueError, match="use 'multilabel'"):
        train(tags, ModelSpec(width=4, depth=1), MixSpec("mixup"), _fast(), hooks)
    with pytest.raises(ValueError, match="needs multi-label targets"):
        train(load_digits(), ModelSpec(width=4, depth=1), MixSpec("mixup"), _fast(), hooks,
              task="multilabel")
    assert hooks.starts == 0


# ---------------------------------------------------------------------- calibration


def _digits_subset(n_train: int = 300, n_eval: int = 150) -> PreparedDataset:
    ds = load_digits()
    n = n_train + 2 * n_eval
    split = torch.tensor([0] * n_train + [1] * n_eval + [2] * n_eval, dtype=torch.uint8)
    return PreparedDataset(inputs={"image": ds.inputs["image"][:n]}, labels=ds.labels[:n],
                           clean_labels=ds.clean_labels[:n], split=split,
                           class_names=ds.class_names, modality_kinds=ds.modality_kinds)


def test_temperature_is_fitted_reported_and_saved_for_inference():
    ds = _digits_subset()
    hooks = Checkpoints()
    spec = ModelSpec(width=8, depth=2)
    result = train(ds, spec, MixSpec("mixup", alpha=1.0), _fast(epochs=3), hooks)
    m = result.metrics
    t = m["temperature"]
    assert 0.05 <= t <= 20 and t != 1.0
    # only the final checkpoint carries T: it is fitted after the last epoch
    # each epoch's checkpoint, then the run's own: the kept model with its temperature
    assert [("temperature" in meta) for _, meta in hooks.saved] == [False, False, False, True]
    tensors, meta = hooks.saved[-1]
    loaded = load_model(tensors, meta)
    assert loaded.temperature == t and loaded.task.name == "classification"

    cpu = torch.device("cpu")
    images, train_rows = ds.inputs["image"], ds.split_indices("train")
    test_rows = ds.split_indices("test")
    normalize = _normalizer_for("image", images[train_rows], cpu)
    with torch.inference_mode():
        logits = loaded.model(normalize(images[test_rows]))
        probs = loaded.probabilities(logits)
    labels = ds.labels[test_rows]
    nll = F.nll_loss(probs.log(), labels).item()
    assert nll == pytest.approx(m["test_nll_calibrated"], rel=1e-4)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(m["test_loss"], rel=1e-4)
    # scaling by T never changes a prediction, so accuracy is the raw one
    assert (probs.argmax(1) == labels).float().mean().item() == pytest.approx(m["test_acc"])
    assert 0.0 <= m["test_ece_calibrated"] <= 1.0

    val_rows = ds.split_indices("val")
    with torch.inference_mode():
        val_logits = loaded.model(normalize(images[val_rows]))
    val_nll = [F.cross_entropy(val_logits / s, ds.labels[val_rows]).item()
               for s in (t * 0.8, t, t * 1.25)]
    assert val_nll[1] < min(val_nll[0], val_nll[2])  # T minimises the validation NLL


def test_calibration_none_and_bad_values():
    result = train(_digits_subset(100, 30), ModelSpec(width=4, depth=1), MixSpec("mixup"),
                   _fast(calibration="none"))
    assert not {"temperature", "test_ece_calibrated", "test_nll_calibrated"} & set(
        result.metrics)
    with pytest.raises(ValueError, match="calibration: must be one of none, temperature"):
        TrainSpec(calibration="platt")


# -------------------------------------------------------------- missing modalities


def test_what_a_missing_modality_stores_never_reaches_the_model():
    ds = load_synthetic(**SMALL, modalities=("image", "audio", "tabular"), missing_rate=0.5)
    garbage = PreparedDataset(
        inputs={m: x.clone() for m, x in ds.inputs.items()}, labels=ds.labels,
        clean_labels=ds.clean_labels, split=ds.split, class_names=ds.class_names,
        modality_kinds=ds.modality_kinds, provenance=ds.provenance, present=ds.present)
    g = torch.Generator().manual_seed(0)
    for name, mask in ds.present.items():
        x = garbage.inputs[name]
        if x.dtype == torch.uint8:
            x[~mask] = torch.randint(0, 256, x[~mask].shape, generator=g, dtype=torch.uint8)
        else:
            x[~mask] = 100.0 * torch.randn(x[~mask].shape, generator=g)
    for mix_spec in (MixSpec("mixup"), MixSpec("cutmix"),
                     MixSpec("manifold_mixup", manifold_layers=(0,))):
        a = train(ds, _mm("gated"), mix_spec, _fast()).metrics
        b = train(garbage, _mm("gated"), mix_spec, _fast()).metrics
        assert _without_time(a) == _without_time(b), mix_spec.method


def test_normalisation_statistics_come_from_samples_that_have_the_modality():
    x = torch.cat([torch.full((6, 2), 4.0), torch.zeros(4, 2)])
    x[:3] += 2.0  # mean 5, std > 0 over the six present rows
    present = torch.tensor([True] * 6 + [False] * 4)
    norm = _normalizer_for("tabular", x, torch.device("cpu"), present)
    out = norm(x[:6])
    torch.testing.assert_close(out.mean(0), torch.zeros(2), atol=1e-6, rtol=0)


def test_cnn_on_a_dataset_with_missing_images_is_refused():
    ds = load_synthetic(**SMALL, modalities=("image", "tabular"), missing_rate=0.3)
    with pytest.raises(ValueError, match="needs every sample's image"):
        train(ds, ModelSpec(width=4, depth=1), MixSpec("mixup"), _fast())


def test_robustness_keeps_each_sample_s_own_missing_modalities():
    # with image missing everywhere in the test split, removing it changes nothing
    ds = load_synthetic(**SMALL, modalities=("image", "tabular"))
    test_rows = ds.split_indices("test")
    present = torch.ones(ds.num_samples, dtype=torch.bool)
    present[test_rows] = False
    ds.present["image"] = present
    m = train(ds, _mm(), MixSpec("mixup"), _fast()).metrics
    assert m["test_acc_without_image"] == m["test_acc"]
    assert m["test_acc_without_tabular"] <= 0.5  # nothing left but the class prior


# ------------------------------------------------------------ categorical tabular


def _categorical_dataset(n: int = 600, seed: int = 0) -> PreparedDataset:
    """Two numeric noise columns, then two category-code columns (as Parquet
    ingestion stores them: 0 = unseen, 1..C); the class is a non-monotone
    function of the first code."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(1, 7, (n,), generator=g)
    other = torch.randint(0, 4, (n,), generator=g)
    labels = torch.isin(codes, torch.tensor([2, 3, 6])).long()
    x = torch.cat([torch.randn(n, 2, generator=g), codes[:, None].float(),
                   other[:, None].float()], dim=1)
    split = torch.tensor(([0] * 7 + [1] * 2 + [2] * 1) * (n // 10), dtype=torch.uint8)
    return PreparedDataset(
        inputs={"tabular": x}, labels=labels, clean_labels=labels.clone(), split=split,
        class_names=["a", "b"], modality_kinds={"tabular": "tabular"},
        provenance={"tabular": {"tabular": {
            "columns": ["u", "v"],
            "categorical": {"colour": ["c1", "c2", "c3", "c4", "c5", "c6"],
                            "size": ["s", "m", "l"]}}}})


def test_categorical_columns_get_embeddings_and_are_never_mixed_as_numbers():
    ds = _categorical_dataset()
    hooks = Checkpoints()
    seen: list[torch.Tensor] = []
    from app.ml.models import multimodal

    original = multimodal.build_model

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        encoder = model.encoders["tabular"]
        encoder.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0][:, 2:].clone()))
        return model

    import app.ml.training.classify as train_module

    train_module.build_model, saved = spy, train_module.build_model
    try:
        result = train(ds, _mm(), MixSpec("mixup", alpha=1.0), _fast(epochs=8), hooks)
    finally:
        train_module.build_model = saved
    # every batch the encoder saw held whole, in-range codes, mixing or not
    codes = torch.cat(seen)
    assert torch.equal(codes, codes.round())
    assert codes[:, 0].min() >= 1 and codes[:, 0].max() <= 6 and codes[:, 1].max() <= 3
    assert result.metrics["test_acc"] > 0.9, result.metrics

    tensors, meta = hooks.saved[-1]
    assert json.loads(meta["categorical"]) == {
        "tabular": {"columns": [2, 3], "cardinalities": [7, 4]}}
    encoder = load_model(tensors, meta).model.encoders["tabular"]
    assert isinstance(encoder, TabularEncoder)
    assert encoder.categorical == [2, 3] and encoder.cardinalities == [7, 4]


def test_code_columns_are_not_standardised():
    ds = _categorical_dataset()
    norm = _normalizer_for("tabular", ds.inputs["tabular"], torch.device("cpu"),
                           codes=[2, 3])
    out = norm(ds.inputs["tabular"])
    torch.testing.assert_close(out[:, 2:], ds.inputs["tabular"][:, 2:])
    assert out[:, :2].mean(0).abs().max() < 1e-5


def test_inconsistent_tabular_metadata_is_an_error():
    ds = _categorical_dataset()
    ds.provenance["tabular"]["tabular"]["columns"] = ["u"]
    with pytest.raises(ValueError, match="has 4 columns but its metadata lists 1 numeric"):
        train(ds, _mm(), MixSpec("mixup"), _fast())


def test_evaluate_keeps_its_positional_form_and_takes_a_task(tags):
    model = ModelSpec(width=4, depth=1)
    from app.ml.models import build_model

    net = build_model(model, (3, 12, 12), tags.num_classes)
    cpu = torch.device("cpu")
    images = tags.inputs["image"]
    normalize = _normalizer_for("image", images, cpu)
    m = evaluate(net, images, tags.labels, normalize, cpu, 64, None, task="multilabel",
                 report=tags.class_names)
    assert set(m) == MULTILABEL_KEYS | {"report"}
