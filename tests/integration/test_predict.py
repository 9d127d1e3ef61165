"""POST /v1/runs/{id}/predict on the real stack (API and Celery worker processes on
Postgres and Redis): a split's accuracy is the run's own test figure, exactly; an
.npz of the same rows predicts the same; runs that cannot predict, inputs that do
not fit and other projects' objects are refused; and ``mixlab predict``."""

import io
import json
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.client import MixlabClient
from app.db.models import Dataset, Experiment, Run
from app.db.session import session_scope
from app.ml.data import PreparedDataset
from app.ml.safetensors_meta import header_metadata
from app.services import auth, prepared_data
from app.settings import get_settings
from app.storage import get_store
from tests.conftest import Access, Stack
from tests.integration.helpers import auth_headers, experiment
from tests.integration.test_cli import mixlab, ok

pytestmark = pytest.mark.integration

SYNTHETIC = {"num_samples": 300, "num_classes": 4, "image_size": 8, "tabular_features": 4,
             "modalities": ["image", "tabular"], "labels_per_sample": 2, "missing_rate": 0.2}
MULTIMODAL = {"kind": "multimodal", "fusion": "late", "dim": 8, "width": 4, "depth": 1}


@pytest.fixture(scope="module")
def digits(stack: Stack) -> dict[str, Any]:
    with MixlabClient(stack.base_url) as mx:
        ds = mx.wait_for_dataset(mx.create_builtin_dataset("digits", name="predict-digits",
                                                           label_noise=0.2, seed=3)["id"],
                                 timeout=120)
    assert ds["status"] == "ready", ds
    return ds


@pytest.fixture(scope="module")
def run(stack: Stack, digits: dict[str, Any]) -> dict[str, Any]:
    """A small, quick run on digits, with a fitted temperature."""
    with MixlabClient(stack.base_url) as mx:
        finished = mx.wait_for_run(experiment(mx, digits["id"], training={"epochs": 2}),
                                   timeout=180)
    assert finished["status"] == "succeeded", finished["error"]
    assert "temperature" in finished["metrics"]
    return finished


@pytest.fixture(scope="module")
def prepared(digits: dict[str, Any]) -> PreparedDataset:
    """The dataset's own prepared arrays, read from the artifact store."""
    with session_scope() as session:
        row = session.get(Dataset, uuid.UUID(digits["id"]))
        assert row is not None and row.artifact_key
        key = row.artifact_key
    return prepared_data.open_prepared(get_store(), key, get_settings()).to_resident()


def _fake_run(project_id: uuid.UUID, dataset_id: str, status: str,
              task: str = "classification", checkpoint_key: str | None = None) -> str:
    """A run row in ``status`` that no queue message names (no worker touches it)."""
    with session_scope() as session:
        exp = Experiment(project_id=project_id, name="fake", dataset_id=uuid.UUID(dataset_id),
                         task=task, spec={"training": {"epochs": 1}})
        exp.runs.append(Run(status=status, checkpoint_key=checkpoint_key))
        session.add(exp)
        session.commit()
        return str(exp.runs[0].id)


def _post(stack: Stack, run_id: str, key: str | None = None,
          headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else auth_headers()
    return httpx.post(f"{stack.base_url}/v1/runs/{run_id}/predict",
                      headers={**auth, **(headers or {})}, timeout=60, **kw)


def _error(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()["detail"]


# --- a dataset's split ----------------------------------------------------------------

def test_split_accuracy_is_the_runs_test_accuracy(client: MixlabClient, run: dict[str, Any],
                                                  digits: dict[str, Any]) -> None:
    result = client.predict(run["id"], dataset_id=digits["id"], split="test")
    n = digits["split_sizes"]["test"]
    assert result["run_id"] == run["id"] and result["task"] == "classification"
    assert result["n"] == result["n_labelled"] == n == len(result["predictions"])
    assert result["accuracy"] == run["metrics"]["test_acc"]  # the same figure, exactly
    classes = [c["name"] for c in digits["classes"]]
    for i, p in enumerate(result["predictions"]):
        assert p["index"] == i and p["label"] in classes
        assert list(p["probabilities"]) == classes
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["predicted"] == max(p["probabilities"], key=p["probabilities"].get)
    right = sum(p["predicted"] == p["label"] for p in result["predictions"])
    assert right / n == pytest.approx(result["accuracy"], abs=1e-6)


def test_indices_pick_rows_of_the_split(client: MixlabClient, stack: Stack,
                                        run: dict[str, Any], digits: dict[str, Any],
                                        prepared: PreparedDataset) -> None:
    full = client.predict(run["id"], dataset_id=digits["id"], split="val")["predictions"]
    some = client.predict(run["id"], dataset_id=digits["id"], split="val",
                          indices=[5, 0, 5, 17])
    assert [p["index"] for p in some["predictions"]] == [5, 0, 5, 17]
    assert some["n"] == some["n_labelled"] == 4
    for p in some["predictions"]:
        same = full[p["index"]]
        assert p["predicted"] == same["predicted"] and p["label"] == same["label"]
        assert p["probabilities"] == pytest.approx(same["probabilities"], abs=1e-5)
    # labels are the true (clean) classes, also where the train split's are noisy
    train = prepared.split_indices("train")
    noisy = int(np.flatnonzero((prepared.labels != prepared.clean_labels)[train].numpy())[0])
    shown = client.predict(run["id"], dataset_id=digits["id"], split="train",
                           indices=[noisy])["predictions"][0]
    assert shown["label"] == prepared.class_names[int(prepared.clean_labels[train[noisy]])]

    size = digits["split_sizes"]["val"]
    error = _error(_post(stack, run["id"], json={"dataset_id": digits["id"], "split": "val",
                                                 "indices": [0, size]}), 422)
    assert error[0]["loc"] == ["body", "indices", 1] and f"0..{size - 1}" in error[0]["msg"]
    error = _error(_post(stack, run["id"], json={"dataset_id": digits["id"],
                                                 "indices": list(range(10_001))}), 422)
    assert error[0]["loc"] == ["body", "indices"] and "10000" in error[0]["msg"]
    error = _error(_post(stack, run["id"], json={"dataset_id": digits["id"],
                                                 "split": "dev"}), 422)
    assert error[0]["loc"] == ["body", "split"]


def test_a_read_key_may_predict(stack: Stack, access: Access, run: dict[str, Any],
                                digits: dict[str, Any]) -> None:
    with session_scope() as session:
        _, key = auth.create_key(session, access.project_id, "predict-read", "read")
    response = _post(stack, run["id"], key, json={"dataset_id": digits["id"], "indices": [0]})
    assert response.status_code == 200, response.text


# --- a file ---------------------------------------------------------------------------

def test_npz_of_the_same_rows_predicts_the_same(client: MixlabClient, tmp_path: Path,
                                                run: dict[str, Any], digits: dict[str, Any],
                                                prepared: PreparedDataset) -> None:
    rows = prepared.split_indices("test")[:40]
    by_split = client.predict(run["id"], dataset_id=digits["id"], indices=list(range(40)))
    path = tmp_path / "rows.npz"
    np.savez(path, image=prepared.inputs["image"][rows].numpy(),
             label=prepared.labels[rows].numpy())
    by_file = client.predict(run["id"], file=path)
    assert by_file["n"] == by_file["n_labelled"] == 40
    assert by_file["accuracy"] == pytest.approx(by_split["accuracy"], abs=1e-6)
    for a, b in zip(by_file["predictions"], by_split["predictions"], strict=True):
        assert a["index"] == b["index"]
        assert a["predicted"] == b["predicted"] and a["label"] == b["label"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)

    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, image=prepared.inputs["image"][rows[:3]].numpy())
    result = client.predict(run["id"], file=unlabelled)
    assert result["accuracy"] is None and result["n_labelled"] == 0 and result["n"] == 3
    assert [p["label"] for p in result["predictions"]] == [None] * 3
    assert [p["predicted"] for p in result["predictions"]] == [
        p["predicted"] for p in by_split["predictions"][:3]]


def test_a_zip_of_class_folders_is_read_as_an_upload(client: MixlabClient, tmp_path: Path,
                                                     run: dict[str, Any],
                                                     digits: dict[str, Any],
                                                     prepared: PreparedDataset) -> None:
    test = prepared.split_indices("test")[:12]
    by_split = client.predict(run["id"], dataset_id=digits["id"], indices=list(range(12)))
    members = {}
    for k, row in enumerate(test.tolist()):
        png = io.BytesIO()
        Image.fromarray(prepared.inputs["image"][row, 0].numpy(), "L").save(png, "PNG")
        members[f"{prepared.label_name(row)}/{k:02d}.png"] = png.getvalue()
    path = tmp_path / "digits.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    by_file = client.predict(run["id"], file=path)
    order = [int(name.rsplit("/", 1)[1][:2]) for name in sorted(members)]  # rows: by path
    assert by_file["n"] == by_file["n_labelled"] == 12
    for p, k in zip(by_file["predictions"], order, strict=True):
        assert p["label"] == by_split["predictions"][k]["label"]
        assert p["predicted"] == by_split["predictions"][k]["predicted"]
    assert by_file["accuracy"] == pytest.approx(by_split["accuracy"], abs=1e-6)


def test_inputs_that_do_not_fit_the_model_name_the_modality(stack: Stack, tmp_path: Path,
                                                            run: dict[str, Any]) -> None:
    small = tmp_path / "small.npz"
    np.savez(small, image=np.zeros((4, 1, 4, 4), np.uint8))
    error = _error(_post(stack, run["id"], files={"file": ("small.npz", small.read_bytes())}),
                   422)
    assert error[0]["loc"] == ["body", "file", "image"]
    assert "[1, 4, 4] differs from the [1, 8, 8]" in error[0]["msg"], error

    other = tmp_path / "tabular.npz"
    np.savez(other, tabular=np.zeros((4, 3), np.float32))
    error = _error(_post(stack, run["id"], files={"file": ("t.npz", other.read_bytes())}), 422)
    assert error[0]["loc"] == ["body", "file", "image"]
    assert "the model reads modality 'image', which the input lacks" in error[0]["msg"]

    labels = tmp_path / "labels.npz"
    np.savez(labels, image=np.zeros((2, 8, 8), np.uint8), label=np.array(["0", "cat"]))
    error = _error(_post(stack, run["id"], files={"file": ("l.npz", labels.read_bytes())}),
                   422)
    assert error[0]["loc"] == ["body", "file", "label"] and "'cat'" in error[0]["msg"]


def test_a_file_that_does_not_parse_is_422(stack: Stack, run: dict[str, Any]) -> None:
    error = _error(_post(stack, run["id"], files={"file": ("x.npz", b"not a zip")}), 422)
    assert error[0]["loc"] == ["body", "file"] and "not an .npz archive" in error[0]["msg"]
    error = _error(_post(stack, run["id"], files={"file": ("x.parquet", b"PAR1nope")}), 422)
    assert error[0]["loc"] == ["body", "file"] and "Parquet" in error[0]["msg"]
    error = _error(_post(stack, run["id"], files={"file": ("x.npz", b"PK")},
                         data={"spec": json.dumps({"label": "y"})}), 422)
    assert error[0]["loc"] == ["body", "spec"]
    error = _error(_post(stack, run["id"], content=b"x",
                         headers={"Content-Type": "text/plain"}), 422)
    assert error[0]["loc"] == ["header", "content-type"]


# --- runs that cannot predict, other projects' objects ---------------------------------

@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_a_run_that_has_not_succeeded_is_409(stack: Stack, access: Access,
                                             digits: dict[str, Any], status: str) -> None:
    run_id = _fake_run(access.project_id, digits["id"], status)
    detail = _error(_post(stack, run_id, json={"dataset_id": digits["id"]}), 409)
    assert f"run {run_id} is {status}" in detail


def test_a_retrieval_run_is_422(stack: Stack, access: Access, digits: dict[str, Any]) -> None:
    run_id = _fake_run(access.project_id, digits["id"], "succeeded", task="retrieval")
    error = _error(_post(stack, run_id, json={"dataset_id": digits["id"]}), 422)
    assert error[0]["loc"] == ["path", "run_id"] and "retrieval" in error[0]["msg"]


def test_a_checkpoint_without_stored_normalisation_is_409(stack: Stack, access: Access,
                                                         client: MixlabClient,
                                                         run: dict[str, Any],
                                                         digits: dict[str, Any]) -> None:
    blob = client.download_checkpoint(run["id"])
    meta = {k: v for k, v in header_metadata(blob).items() if k != "normalization"}
    key = f"tests/legacy-{uuid.uuid4().hex}.safetensors"
    get_store().put(key, st_save(st_load(blob), metadata=meta))
    run_id = _fake_run(access.project_id, digits["id"], "succeeded", checkpoint_key=key)
    detail = _error(_post(stack, run_id, json={"dataset_id": digits["id"]}), 409)
    assert "predates stored input normalisation" in detail


def test_unknown_run_and_another_projects_dataset_are_404(stack: Stack, run: dict[str, Any],
                                                          digits: dict[str, Any]) -> None:
    missing = str(uuid.uuid4())
    detail = _error(_post(stack, missing, json={"dataset_id": digits["id"]}), 404)
    assert detail == f"run {missing} not found"
    with session_scope() as session:
        other = auth.create_project(session, f"predict-{uuid.uuid4().hex[:6]}")
        source = session.get(Dataset, uuid.UUID(digits["id"]))
        assert source is not None
        theirs = Dataset(project_id=other.id, name="theirs", status="ready",
                         source=source.source, summary=source.summary,
                         artifact_key=source.artifact_key, size_bytes=source.size_bytes,
                         progress=1.0)
        session.add(theirs)
        session.commit()
        theirs_id = str(theirs.id)
        _, their_key = auth.create_key(session, other.id, "theirs", "write")
    detail = _error(_post(stack, run["id"], json={"dataset_id": theirs_id}), 404)
    assert detail == f"dataset {theirs_id} not found"
    detail = _error(_post(stack, run["id"], their_key, json={"dataset_id": theirs_id}), 404)
    assert detail == f"run {run['id']} not found"  # our run, from their key


# --- multi-label, multimodal, missing modalities ----------------------------------------

def test_multilabel_split_accuracy_is_the_runs_subset_accuracy(client: MixlabClient,
                                                               stack: Stack,
                                                               digits: dict[str, Any]) -> None:
    tagged = client.wait_for_dataset(client.create_builtin_dataset(
        "synthetic", name="predict-tags", **SYNTHETIC)["id"], timeout=120)
    assert tagged["status"] == "ready", tagged
    run_id = str(client.create_experiment({
        "name": "predict-tags", "dataset_id": tagged["id"], "task": "multilabel",
        "model": MULTIMODAL, "augmentation": {"method": "mixup"},
        "training": {"epochs": 1, "batch_size": 64, "seed": 0}})["run_ids"][0])
    finished = client.wait_for_run(run_id, timeout=180)
    assert finished["status"] == "succeeded", finished["error"]

    result = client.predict(run_id, dataset_id=tagged["id"])
    assert result["task"] == "multilabel" and result["n"] == tagged["split_sizes"]["test"]
    assert result["accuracy"] == finished["metrics"]["test_subset_acc"]
    classes = [c["name"] for c in tagged["classes"]]
    for p in result["predictions"]:
        assert isinstance(p["label"], list) and set(p["label"]) <= set(classes)
        assert p["predicted"] == [c for c in classes if p["probabilities"][c] >= 0.5]
    # a multi-label model and data with one class per sample
    error = _error(_post(stack, run_id, json={"dataset_id": digits["id"]}), 422)
    assert error[0]["loc"] == ["body", "dataset_id"] and "multi-label" in error[0]["msg"]


# --- the command line ---------------------------------------------------------------------

def test_cli_predict(stack: Stack, access: Access, tmp_path: Path, run: dict[str, Any],
                     digits: dict[str, Any], prepared: PreparedDataset) -> None:
    shown = ok(stack.base_url, "predict", run["id"], "--dataset", digits["id"])
    assert re.search(rf"accuracy: {run['metrics']['test_acc']:.4f} over "
                     rf"{digits['split_sizes']['test']} labelled", shown), shown
    assert "top probability" in shown and "more rows" in shown

    some = json.loads(ok(stack.base_url, "predict", run["id"], "--dataset", digits["id"],
                         "--split", "val", "--indices", "0,3-5", "--json"))
    assert [p["index"] for p in some["predictions"]] == [0, 3, 4, 5]

    path = tmp_path / "rows.npz"
    rows = prepared.split_indices("test")[:5]
    np.savez(path, image=prepared.inputs["image"][rows].numpy())
    shown = ok(stack.base_url, "predict", run["id"], str(path))
    assert "accuracy: - (no sample has a label)" in shown and "rows.npz: 5 samples" in shown

    queued = _fake_run(access.project_id, digits["id"], "queued")
    done = mixlab(stack.base_url, "predict", queued, "--dataset", digits["id"])
    assert done.returncode == 1 and f"error: 409 run {queued} is queued" in done.stderr
    done = mixlab(stack.base_url, "predict", run["id"])
    assert done.returncode == 2 and "exactly one of FILE or --dataset" in done.stderr
    done = mixlab(stack.base_url, "predict", run["id"], "--dataset", digits["id"],
                  "--indices", "a,b")
    assert done.returncode == 2 and "--indices" in done.stderr
