"""API keys' format and hashing, and the model-size limit's parameter count, which
must match the model the worker builds without building it for real."""

import hashlib
import json
import uuid
from typing import Any

import pytest
import torch

from app.ml.data import PreparedDataset, load_digits
from app.ml.data.synthetic import load_synthetic
from app.ml.models import build_model
from app.ml.models.towers import build_dual_encoder
from app.ml.training.batches import categorical_columns
from app.ml.training.batches import vocab_sizes as _vocab_sizes
from app.schemas.experiments import ExperimentCreate
from app.services.auth import generate_key, hash_key, key_prefix
from app.services.errors import FieldError
from app.services.limits import model_parameters


def test_keys_are_random_well_formed_and_stored_as_sha256() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        prefix = key_prefix(key)
        assert prefix is not None and key.startswith(prefix) and len(prefix) == 12
        assert len(key.split("_", 2)[2]) >= 43  # 32 random bytes, base64url
        assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len({key_prefix(k) for k in keys}) == 50


@pytest.mark.parametrize("bad", ["", "mxl_", "mxl_0123abcd_", "mxl_0123ABCD_secret",
                                 "mxl_0123abc_secret", "abc_0123abcd_secret",
                                 "mxl_0123abcd_" + "x" * 300, "Bearer mxl_0123abcd_x"])
def test_malformed_keys_have_no_prefix(bad: str) -> None:
    assert key_prefix(bad) is None


def _real_count(request: ExperimentCreate, ds: PreparedDataset) -> int:
    spec = request.model.to_ml()
    shapes = {m: tuple(x.shape[1:]) for m, x in ds.inputs.items()}
    kinds, modalities = dict(ds.modality_kinds), list(ds.inputs)
    if request.task == "retrieval":
        assert request.retrieval is not None
        model = build_dual_encoder(spec, request.retrieval.query, request.retrieval.target,
                                   shapes, kinds, _vocab_sizes(ds, modalities),
                                   categorical_columns(ds, modalities))
    elif spec.kind == "cnn":
        model = build_model(spec, shapes["image"], ds.num_classes)
    else:
        model = build_model(spec, shapes, ds.num_classes, kinds=kinds,
                            vocab_sizes=_vocab_sizes(ds, modalities),
                            categorical=categorical_columns(ds, modalities),
                            multilabel=ds.multilabel)
    return sum(p.numel() for p in model.parameters())


SYNTHETIC = {"model": {"kind": "multimodal", "dim": 24, "text_dim": 16, "width": 4}}


@pytest.mark.parametrize(("which", "body"), [
    ("digits", {}),
    ("digits", {"model": {"width": 48, "depth": 4}}),
    ("synthetic", SYNTHETIC),
    ("synthetic", {"model": {**SYNTHETIC["model"], "fusion": "attention",
                             "text_encoder": "transformer", "heads": 4, "layers": 2}}),
    ("synthetic", {"model": {**SYNTHETIC["model"], "fusion": "tensor", "rank": 3}}),
    ("synthetic", {**SYNTHETIC, "task": "retrieval",
                   "retrieval": {"query": "image", "target": "text"},
                   "augmentation": {"method": "mixgen"}}),
])
def test_the_parameter_count_is_the_built_models(which: str, body: dict[str, Any]) -> None:
    ds = load_digits() if which == "digits" else load_synthetic(num_samples=120)
    request = ExperimentCreate.model_validate({"dataset_id": str(uuid.uuid4()), **body})
    summary = json.loads(json.dumps(ds.summary()))  # as stored in the database
    allocated = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    assert model_parameters(request, summary) == _real_count(request, ds)
    if torch.cuda.is_available():
        assert torch.cuda.memory_allocated() == allocated


def test_a_model_that_cannot_be_built_is_a_field_error() -> None:
    summary = json.loads(json.dumps(load_synthetic(num_samples=120).summary()))
    summary["modalities"] = [m for m in summary["modalities"] if m["kind"] != "image"]
    request = ExperimentCreate.model_validate({"dataset_id": str(uuid.uuid4())})
    with pytest.raises(FieldError) as caught:
        model_parameters(request, summary)
    assert caught.value.loc == ("body", "model", "kind")  # the kind needs an image
