"""Freezing parts of a model for transfer (``model.freeze``, app.ml.models.freeze):
the part names, the refusals, and training with frozen parts (CPU, no database)."""

import uuid

import pytest
import torch
from pydantic import ValidationError

from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec, build_model
from app.ml.models.freeze import freeze, freeze_problem, part_names
from app.ml.training import TrainHooks, TrainSpec, train
from app.ml.training.recipe import build_optimizer
from app.schemas.experiments import ModelSpecIn
from tests.recipes import SHORT

SPEC = ModelSpec(kind="multimodal", width=4, depth=2, dim=16)
SHAPES = {"image": (3, 16, 16), "audio": (1, 32, 32)}
PARTS = ["image_encoder", "audio_encoder", "fusion"]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC, SHAPES, 4)


def _under(state: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return sorted(k for k in state if k.startswith(prefix))


class LastCheckpoint(TrainHooks):
    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
        self.tensors = tensors


# --- names and refusals -----------------------------------------------------------------

def test_part_names_by_kind() -> None:
    assert part_names("multimodal", ["image", "audio"]) == PARTS
    assert part_names("cnn", ["image"]) == part_names("wide_resnet", []) == ["backbone"]


@pytest.mark.parametrize(("parts", "words"), [
    (["text_encoder"], "no part 'text_encoder'; its parts are image_encoder, audio_encoder, "
                       "fusion"),
    (["fusion", "fusion"], "lists 'fusion' twice"),
    (PARTS, "every part"),
    (["fusion", "audio_encoder", "image_encoder"], "every part"),
])
def test_what_cannot_be_frozen_is_named(parts: list[str], words: str) -> None:
    problem = freeze_problem(parts, PARTS)
    assert problem is not None and words in problem
    with pytest.raises(ValueError, match=r"^model\.freeze: "):
        freeze(_model(), parts, PARTS)


def test_a_part_of_the_parts_can_be_frozen() -> None:
    assert freeze_problem(["image_encoder", "fusion"], PARTS) is None
    assert freeze_problem(["backbone"], ["backbone"]) is None


def test_frozen_parameters_are_out_of_the_optimizer() -> None:
    model = _model()
    frozen = freeze(model, ["image_encoder"], PARTS)
    assert frozen == _under(model.state_dict(), "encoders.image.")
    in_optimizer = {id(p) for g in build_optimizer(model, TrainSpec()).param_groups
                    for p in g["params"]}
    image = list(model.encoders["image"].parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoders.image.")]
    assert image and not any(p.requires_grad or id(p) in in_optimizer for p in image)
    assert rest and all(p.requires_grad and id(p) in in_optimizer for p in rest)


def test_a_frozen_part_stays_in_eval_mode_while_the_rest_trains() -> None:
    model = _model()
    freeze(model, ["image_encoder"], PARTS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # what the loop does each epoch
    batch = {"image": torch.randn(8, *SHAPES["image"]), "audio": torch.randn(8, *SHAPES["audio"])}
    model(batch).sum().backward()
    assert not any(m.training for m in model.encoders["image"].modules())
    assert all(m.training for m in model.encoders["audio"].modules())
    after = model.state_dict()
    stats = [k for k in _under(after, "encoders.image.") if "running_" in k]
    assert stats and all(torch.equal(after[k], before[k]) for k in stats)
    moved = [k for k in _under(after, "encoders.audio.") if "running_mean" in k]
    assert moved and all(not torch.equal(after[k], before[k]) for k in moved)
    assert all(p.grad is None for p in model.encoders["image"].parameters())


def test_backbone_leaves_only_the_classifier_training() -> None:
    model = build_model(ModelSpec(width=8, depth=2), (1, 8, 8), 10)
    frozen = freeze(model, ["backbone"], ["backbone"])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["head.1.bias", "head.1.weight"]
    assert frozen == sorted(k for k in model.state_dict() if not k.startswith("head.1."))


# --- training -----------------------------------------------------------------------------

def test_training_keeps_a_frozen_part_as_it_started_and_reports_it() -> None:
    data = load_synthetic(num_samples=200, num_classes=4, modalities=["image", "audio"])
    start = {k: v.clone() for k, v in _model(seed=1).state_dict().items()}
    hooks = LastCheckpoint()
    # AdamW with weight decay: a frozen tensor left in the optimizer would move
    spec = TrainSpec(epochs=2, batch_size=32, device="cpu", **SHORT)
    result = train(data, SPEC, MixSpec("mixup"), spec, hooks, init_weights=start,
                   freeze=["image_encoder"])
    assert result.status == "completed"
    image = _under(start, "encoders.image.")
    assert result.init is not None and result.init["frozen"] == image
    assert result.init["loaded"] == len(start)
    assert any("running_mean" in k for k in image)  # BatchNorm statistics included
    end = hooks.tensors
    assert all(torch.equal(end[k], start[k]) for k in image)
    trained = [k for k in start if not k.startswith("encoders.image.")
               and k.endswith("weight")]
    assert all(not torch.equal(end[k], start[k]) for k in trained)


# --- the spec -------------------------------------------------------------------------------

def test_freeze_is_stored_when_set_and_never_reaches_app_ml() -> None:
    run = uuid.uuid4()
    plain = ModelSpecIn(kind="multimodal", init_from_run=run)
    assert "freeze" not in plain.model_dump(mode="json")
    frozen = ModelSpecIn(kind="multimodal", init_from_run=run, freeze=["image_encoder"])
    assert frozen.model_dump(mode="json") == {**plain.model_dump(mode="json"),
                                              "freeze": ["image_encoder"]}
    assert frozen.to_ml() == plain.to_ml()


@pytest.mark.parametrize(("model", "words"), [
    ({"freeze": ["fusion", "fusion"], "init_from_run": str(uuid.uuid4())}, "twice"),
    ({"freeze": ["fusion"]}, "needs model.weights or model.init_from_run"),
])
def test_bad_freeze_fields_are_refused_at_freeze(model: dict, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpecIn(kind="multimodal", **model)
    (error,) = info.value.errors()
    assert error["loc"] == ("freeze",) and words in error["msg"]


@pytest.mark.parametrize(("task", "kind", "freeze", "words"), [
    ("retrieval", "multimodal", ["image_encoder"], "not supported for task retrieval"),
    ("classification", "cnn", ["image_encoder"], "its parts are backbone"),
    ("classification", "multimodal", ["text_encoder"], "its parts are image_encoder, "
                                                       "audio_encoder, fusion"),
])
def test_the_service_checks_freeze_against_the_dataset(task: str, kind: str,
                                                       freeze: list[str], words: str) -> None:
    from app.schemas.experiments import ExperimentCreate
    from app.services.errors import FieldError
    from app.services.experiments import _check_freeze

    request = ExperimentCreate.model_validate({
        "dataset_id": str(uuid.uuid4()), "task": task,
        **({"retrieval": {"query": "image", "target": "audio"}} if task == "retrieval" else {}),
        "model": {"kind": kind, "init_from_run": str(uuid.uuid4()), "freeze": freeze}})
    with pytest.raises(FieldError) as info:
        _check_freeze(request, {"modalities": [{"name": "image"}, {"name": "audio"}]})
    ((loc, message),) = info.value.problems
    assert loc == ("body", "model", "freeze") and words in message


# --- models with a shared latent ----------------------------------------------------------

LATENT = ModelSpec(kind="multimodal_vae", width=4, depth=1, dim=8, latent_dim=4)


def test_a_latent_model_names_its_encoders_decoders_and_classifier() -> None:
    assert part_names("multimodal_ae", ["image", "audio"]) == [
        "image_encoder", "audio_encoder", "image_decoder", "audio_decoder", "classifier"]


def test_a_latent_models_frozen_encoder_and_classifier_end_as_they_started() -> None:
    data = load_synthetic(num_samples=200, num_classes=4, modalities=["image", "audio"])
    torch.manual_seed(1)
    start = {k: v.clone() for k, v in
             build_model(LATENT, {m: tuple(x.shape[1:]) for m, x in data.inputs.items()}, 4,
                         kinds=data.modality_kinds).state_dict().items()}
    hooks = LastCheckpoint()
    spec = TrainSpec(epochs=2, batch_size=32, device="cpu", **SHORT)
    result = train(data, LATENT, MixSpec("latent_mixup"), spec, hooks, init_weights=start,
                   freeze=["image_encoder", "classifier"])
    assert result.status == "completed"
    kept = [k for k in start if k.startswith(("encoders.image.", "posteriors.image.",
                                              "classifier."))]
    assert result.init is not None and result.init["frozen"] == sorted(kept)
    assert any(k.startswith("posteriors.image.") for k in kept)
    end = hooks.tensors
    assert all(torch.equal(end[k], start[k]) for k in kept)
    trained = [k for k in start if k.startswith(("decoders.image.", "encoders.audio."))
               and k.endswith("weight")]
    assert trained and all(not torch.equal(end[k], start[k]) for k in trained)
