"""Runs that start from weights (``model.weights``) or from another run
(``model.init_from_run``), on the real stack; the weight files are made here."""

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file

from app.client import MixlabClient
from app.db.models import Experiment, Run
from app.db.session import session_scope
from app.ml.models import ModelSpec, build_model
from app.schemas.experiments import ExperimentCreate
from app.services import auth
from app.storage import checkpoint_key, get_store
from tests.conftest import TMP, Access, Stack
from tests.integration.helpers import auth_headers, experiment
from worker.execution import load_start

pytestmark = pytest.mark.integration

MODEL = {"width": 8, "depth": 2}
RECIPE = {"epochs": 2, "optimizer": "adamw", "lr": 0.003, "schedule": "constant", "seed": 0}


@pytest.fixture(scope="module")
def digits(stack: Stack) -> dict:
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("digits", name="digits-init", seed=1)
        return mx.wait_for_dataset(created["id"], timeout=120)


@pytest.fixture(scope="module")
def run_a(stack: Stack, digits: dict) -> str:
    """A succeeded run to start others from."""
    with MixlabClient(stack.base_url) as mx:
        run_id = experiment(mx, digits["id"], model=MODEL, training={**RECIPE, "epochs": 3})
        run = mx.wait_for_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]
    assert run["init"] is None
    return run_id


def _first_epoch(client: MixlabClient, run_id: str) -> tuple[float, float]:
    history = client.metrics(run_id)
    (acc,) = [p["value"] for p in history["val_acc"] if p["epoch"] == 1]
    (loss,) = [p["value"] for p in history["val_loss"] if p["epoch"] == 1]
    return acc, loss


def _weights_file(tensors: dict[str, torch.Tensor]) -> Path:
    path = TMP / "imports" / f"weights-{uuid.uuid4().hex[:8]}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def _post(stack: Stack, digits: dict, model: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/experiments", headers=auth_headers(), json={
        "dataset_id": digits["id"], "model": {**MODEL, **model}, "training": RECIPE})


def test_a_run_starts_from_a_finished_run(client: MixlabClient, digits: dict,
                                          run_a: str) -> None:
    warm = experiment(client, digits["id"], model={**MODEL, "init_from_run": run_a},
                      training=RECIPE)
    cold = experiment(client, digits["id"], model=MODEL, training=RECIPE)
    warm_run, cold_run = (client.wait_for_run(r, timeout=300) for r in (warm, cold))
    assert warm_run["status"] == cold_run["status"] == "succeeded", warm_run["error"]

    tensors = st_load(client.download_checkpoint(run_a))
    assert warm_run["init"] == {"source": f"run:{run_a}", "loaded": len(tensors),
                                "mismatched": {}, "missing": [], "unexpected": [],
                                "frozen": []}
    assert cold_run["init"] is None
    spec = client.get_experiment(warm_run["experiment_id"])["spec"]["model"]
    assert spec == {"kind": "cnn", **MODEL, "dropout": 0.0, "init_from_run": run_a}

    # the same seed and recipe: only the start differs, and it shows from epoch 1
    (warm_acc, warm_loss), (cold_acc, cold_loss) = (_first_epoch(client, r)
                                                    for r in (warm, cold))
    assert warm_acc > cold_acc and warm_loss < cold_loss, (warm_acc, cold_acc)


def test_a_run_starts_from_a_weights_file_and_reports_what_did_not_fit(
        client: MixlabClient, digits: dict) -> None:
    # another head size (3 classes): everything but the head loads
    made = build_model(ModelSpec(**MODEL), (1, 8, 8), 3).state_dict()
    path = _weights_file(made)
    run_id = experiment(client, digits["id"], model={**MODEL, "weights": path.as_uri()},
                        training={**RECIPE, "epochs": 1})
    run = client.wait_for_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]
    assert run["init"] == {
        "source": path.as_uri(), "loaded": len(made) - 2, "missing": [], "unexpected": [],
        "frozen": [],
        "mismatched": {"head.1.bias": {"expected": [10], "got": [3]},
                       "head.1.weight": {"expected": [10, 16], "got": [3, 16]}}}


def test_a_run_starts_from_a_file_in_the_store(client: MixlabClient, digits: dict,
                                               run_a: str) -> None:
    source = f"store:{checkpoint_key(run_a, 1)}"
    run_id = experiment(client, digits["id"], model={**MODEL, "weights": source},
                        training={**RECIPE, "epochs": 1})
    run = client.wait_for_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]
    assert run["init"]["source"] == source and run["init"]["loaded"] > 0
    assert not (run["init"]["mismatched"] or run["init"]["missing"])


def _fake_run(project_id: uuid.UUID, dataset_id: str, status: str) -> tuple[str, str]:
    """An experiment and run row that no worker will see (nothing is published and
    this stack runs no reconciler): (experiment id, run id)."""
    spec = ExperimentCreate.model_validate({"dataset_id": dataset_id, "model": MODEL,
                                            "training": RECIPE})
    with session_scope() as session:
        row = Experiment(project_id=project_id, name="fake", dataset_id=uuid.UUID(dataset_id),
                         task="classification",
                         spec=spec.model_dump(mode="json", include={"model", "augmentation",
                                                                    "training"}))
        row.runs.append(Run(status=status, checkpoint_key="runs/x/checkpoint.safetensors"
                            if status == "succeeded" else None))
        session.add(row)
        session.flush()
        return str(row.id), str(row.runs[0].id)


def test_bad_starts_are_refused_and_nothing_is_stored(client: MixlabClient, stack: Stack,
                                                      digits: dict, run_a: str,
                                                      access: Access) -> None:
    queued_exp, queued = _fake_run(access.project_id, digits["id"], "queued")
    with session_scope() as session:
        other = auth.create_project(session, f"other-{uuid.uuid4().hex[:6]}").id
    other_exp, others = _fake_run(other, digits["id"], "succeeded")
    fits_nothing = _weights_file({"encoder.weight": torch.zeros(4, 4),
                                  "head.1.weight": torch.zeros(2, 2)})
    not_mine = f"store:runs/{others}/checkpoint.safetensors"
    before = client.list_experiments()["total"]
    try:
        def refused(model: dict[str, Any], field: str, *words: str) -> None:
            response = _post(stack, digits, model)
            assert response.status_code == 422, response.text
            (error,) = response.json()["detail"]
            assert error["loc"] == ["body", "model", field], error
            assert all(w in error["msg"] for w in words), error["msg"]

        refused({"weights": fits_nothing.as_uri()}, "weights", "none of the 2 tensors",
                "head.1.weight: the model's [10, 16], the file's [2, 2]", "encoder.weight")
        refused({"weights": fits_nothing.as_uri(), "init_from_run": run_a}, "init_from_run",
                "not both")
        refused({"init_from_run": queued}, "init_from_run", "is queued")
        client.cancel_run(queued)
        refused({"init_from_run": queued}, "init_from_run", "is cancelled")
        refused({"weights": (TMP / "elsewhere.safetensors").as_uri()}, "weights",
                "outside the folders")
        refused({"weights": f"store:datasets/{digits['id']}/prepared/index.safetensors"},
                "weights", "runs/<run id>")
        for model in ({"init_from_run": str(uuid.uuid4())}, {"init_from_run": others},
                      {"weights": not_mine}):
            response = _post(stack, digits, model)
            assert response.status_code == 404, response.text
        assert client.list_experiments()["total"] == before
    finally:
        client.delete_experiment(queued_exp)
        with session_scope() as session:
            session.delete(session.get(Experiment, uuid.UUID(other_exp)))


def test_the_worker_resolves_the_start_again(digits: dict, run_a: str,
                                             access: Access) -> None:
    def spec(model: dict[str, Any]) -> ExperimentCreate:
        return ExperimentCreate.model_validate({"dataset_id": digits["id"],
                                                "model": {**MODEL, **model}})

    store = get_store()
    start = load_start(access.project_id, spec({"init_from_run": run_a}).model, store)
    assert start is not None and start[0].label == f"run:{run_a}"
    assert start[1].keys() == st_load(store.get(checkpoint_key(run_a, 1))).keys()
    assert load_start(access.project_id, spec({}).model, store) is None
    # a file removed (or a link turned elsewhere) since the submission fails the run
    gone = _weights_file({"head.1.bias": torch.zeros(10)})
    gone.unlink()
    with pytest.raises(ValueError, match=r"^model.weights: .*no such file"):
        load_start(access.project_id, spec({"weights": gone.as_uri()}).model, store)
    with pytest.raises(ValueError, match=r"^model.init_from_run: run .* not found"):
        load_start(access.project_id, spec({"init_from_run": str(uuid.uuid4())}).model, store)


# --- model.freeze: transfer with parts kept as the source run left them -------------------

MULTIMODAL = {"kind": "multimodal", "width": 4, "depth": 2, "dim": 16}


@pytest.fixture(scope="module")
def avmnist(stack: Stack) -> dict:
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("avmnist", name="avmnist-freeze")
        return mx.wait_for_dataset(created["id"], timeout=120)


@pytest.fixture(scope="module")
def multimodal_run(stack: Stack, avmnist: dict) -> str:
    with MixlabClient(stack.base_url) as mx:
        run_id = experiment(mx, avmnist["id"], model=MULTIMODAL,
                            training={**RECIPE, "epochs": 1})
        run = mx.wait_for_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]
    return run_id


def test_a_run_keeps_the_frozen_encoder_of_the_run_it_starts_from(
        client: MixlabClient, avmnist: dict, multimodal_run: str) -> None:
    run_id = experiment(client, avmnist["id"],
                        model={**MULTIMODAL, "init_from_run": multimodal_run,
                               "freeze": ["image_encoder"]}, training=RECIPE)
    run = client.wait_for_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]

    source = st_load(client.download_checkpoint(multimodal_run))
    mine = st_load(client.download_checkpoint(run_id))
    image = sorted(k for k in source if k.startswith("encoders.image."))
    assert any("running_mean" in k for k in image)  # BatchNorm statistics too
    assert run["init"] == {"source": f"run:{multimodal_run}", "loaded": len(source),
                           "mismatched": {}, "missing": [], "unexpected": [],
                           "frozen": image}
    assert all(torch.equal(mine[k], source[k]) for k in image)
    trained = [k for k in source if k.startswith(("encoders.audio.", "fusion."))
               and k.endswith("weight")]
    assert trained and all(not torch.equal(mine[k], source[k]) for k in trained)
    spec = client.get_experiment(run["experiment_id"])["spec"]["model"]
    assert spec["freeze"] == ["image_encoder"]


def test_bad_freezes_are_refused_at_model_freeze_and_nothing_is_stored(
        client: MixlabClient, stack: Stack, avmnist: dict, digits: dict,
        multimodal_run: str, run_a: str) -> None:
    before = client.list_experiments()["total"]

    def refused(dataset: dict, model: dict[str, Any], *words: str) -> None:
        response = httpx.post(f"{stack.base_url}/v1/experiments", headers=auth_headers(),
                              json={"dataset_id": dataset["id"], "model": model,
                                    "training": RECIPE})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "model", "freeze"], error
        assert all(w in error["msg"] for w in words), error["msg"]

    start = {**MULTIMODAL, "init_from_run": multimodal_run}
    refused(avmnist, {**start, "freeze": ["text_encoder"]}, "no part 'text_encoder'",
            "image_encoder, audio_encoder, fusion")
    refused(avmnist, {**start, "freeze": ["fusion", "image_encoder", "fusion"]},
            "'fusion' twice")
    refused(avmnist, {**start, "freeze": ["image_encoder", "audio_encoder", "fusion"]},
            "every part")
    refused(avmnist, {**MULTIMODAL, "freeze": ["image_encoder"]},
            "needs model.weights or model.init_from_run")
    refused(digits, {**MODEL, "init_from_run": run_a, "freeze": ["image_encoder"]},
            "its parts are backbone")
    assert client.list_experiments()["total"] == before
