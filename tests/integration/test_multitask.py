"""Task multitask end to end through the real API and worker: a synthetic
dataset with two label columns → a multitask experiment → per-task metrics,
their history and a per-task evaluation; and the requests that do not fit,
refused with 422 naming the field, nothing stored."""

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.client import MixlabClient, MixlabError
from tests.integration.helpers import auth_headers, prepared

pytestmark = pytest.mark.integration

TINY = {"num_samples": 300, "num_classes": 4, "image_size": 8, "tabular_features": 4,
        "modalities": ["image", "tabular"]}
MODEL = {"kind": "multimodal", "fusion": "early", "dim": 8, "width": 4, "depth": 1}


@pytest.fixture(scope="module")
def two_tasks(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("synthetic", name="two-tasks", tasks=2, **TINY)
        return mx.wait_for_dataset(created["id"], timeout=120)


@pytest.fixture(scope="module")
def one_task(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with MixlabClient(stack.base_url) as mx:
        created = mx.create_builtin_dataset("synthetic", name="one-task", **TINY)
        return mx.wait_for_dataset(created["id"], timeout=120)


def test_multitask_experiment_trains_every_head(client: MixlabClient, two_tasks: dict,
                                                 tmp_path: Path) -> None:
    assert two_tasks["status"] == "ready", two_tasks
    tasks = {t["name"]: [c["name"] for c in t["classes"]] for t in two_tasks["tasks"]}
    assert tasks == {"class": ["class0", "class1", "class2", "class3"], "group1": ["g0", "g1"]}
    assert sum(c["count"] for c in two_tasks["tasks"][1]["classes"]) == 300

    run_id = str(client.create_experiment({
        "name": "two-heads", "dataset_id": two_tasks["id"], "task": "multitask",
        "task_weights": {"group1": 2.0}, "model": MODEL,
        "augmentation": {"method": "cutmix", "alpha": 1.0},
        "training": {"epochs": 2, "batch_size": 32, "seed": 0, "checkpoint": "best",
                     "checkpoint_metric": "val_acc.group1"}})["run_ids"][0])
    run = client.wait_for_run(run_id, timeout=120)
    assert run["status"] == "succeeded", run["error"]
    metrics = run["metrics"]
    for task in tasks:
        for key in (f"test_acc.{task}", f"test_ece.{task}", f"val_acc.{task}"):
            assert key in metrics, key
    assert metrics["test_acc"] == pytest.approx(
        (metrics["test_acc.class"] + metrics["test_acc.group1"]) / 2, abs=1e-5)
    history = client.metrics(run_id, key="val_acc.group1")["val_acc.group1"]
    assert [p["epoch"] for p in history] == [1, 2]

    # its model predicts every task; over the test split, the run's own figures
    predicted = client.predict(run_id, dataset_id=two_tasks["id"], split="test")
    assert predicted["task"] == "multitask"
    assert predicted["n"] == two_tasks["split_sizes"]["test"]
    for task in tasks:
        assert predicted["task_accuracy"][task] == pytest.approx(metrics[f"test_acc.{task}"],
                                                                 abs=1e-6)
    assert predicted["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    first = predicted["predictions"][0]
    assert set(first["tasks"]) == set(tasks)
    assert first["predicted"] == first["tasks"]["class"]["predicted"]
    assert set(first["tasks"]["group1"]["probabilities"]) == {"g0", "g1"}
    assert sum(first["tasks"]["group1"]["probabilities"].values()) == pytest.approx(1.0)
    # a file without labels: every task predicted, nothing to score
    rows = tmp_path / "rows.npz"
    rows.write_bytes(_npz(image=np.zeros((2, 3, 8, 8), dtype="uint8"),
                          tabular=np.zeros((2, 4), dtype="float32")))
    unlabelled = client.predict(run_id, file=rows)
    assert unlabelled["n"] == 2 and unlabelled["n_labelled"] == 0
    assert unlabelled["accuracy"] is None and unlabelled["task_accuracy"] is None
    assert {t: p["label"] for t, p in unlabelled["predictions"][0]["tasks"].items()} == {
        "class": None, "group1": None}

    evaluation = client.evaluation(run_id)
    assert evaluation["task"] == "multitask"
    test_size = two_tasks["split_sizes"]["test"]
    for task, classes in tasks.items():
        entry = evaluation["tasks"][task]
        assert entry["class_names"] == classes
        assert sum(map(sum, entry["confusion_matrix"])) == test_size


def test_a_file_predicts_each_task_as_the_split_does(client: MixlabClient,
                                                      tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    colour = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    tasks = {"label.colour": np.array(["red", "blue", "green"])[colour],
             "label.size": (x[:, 2] > 0).astype(np.int64)}
    split = np.repeat([0, 1, 2], [60, 15, 15])  # the test split is the last 15 rows
    dataset = tmp_path / "two-tasks.npz"
    dataset.write_bytes(_npz(tabular=x, split=split, **tasks))
    ready = client.wait_for_dataset(client.upload_dataset(dataset, name="file-tasks")["id"],
                                    timeout=120)
    assert ready["status"] == "ready", ready
    run_id = str(client.create_experiment({
        "name": "file-tasks", "dataset_id": ready["id"], "task": "multitask",
        "model": MODEL, "augmentation": {"method": "mixup", "alpha": 1.0},
        "training": {"epochs": 2, "batch_size": 16, "seed": 0}})["run_ids"][0])
    run = client.wait_for_run(run_id, timeout=120)
    assert run["status"] == "succeeded", run["error"]

    by_split = client.predict(run_id, dataset_id=ready["id"], split="test")
    test_rows = tmp_path / "test-rows.npz"
    test_rows.write_bytes(_npz(tabular=x[75:], **{k: v[75:] for k, v in tasks.items()}))
    by_file = client.predict(run_id, file=test_rows)
    assert by_file["n"] == by_file["n_labelled"] == 15
    assert by_file["task_accuracy"] == pytest.approx(by_split["task_accuracy"], abs=1e-9)
    assert by_file["accuracy"] == pytest.approx(run["metrics"]["test_acc"], abs=1e-6)
    for sent, seen in zip(by_file["predictions"], by_split["predictions"], strict=True):
        for task in ("colour", "size"):
            assert sent["tasks"][task]["predicted"] == seen["tasks"][task]["predicted"]
            assert sent["tasks"][task]["label"] == seen["tasks"][task]["label"]
            assert sent["tasks"][task]["probabilities"] == pytest.approx(
                seen["tasks"][task]["probabilities"], abs=1e-6)

    # labels that do not fit the model's tasks: 422 naming the array
    for arrays, loc in [({"label": tasks["label.size"][75:]}, "label"),
                        ({"label.shape": tasks["label.size"][75:]}, "label.shape"),
                        ({"label.colour": np.array(["purple"] * 15)}, "label.colour")]:
        bad = tmp_path / "bad.npz"
        bad.write_bytes(_npz(tabular=x[75:], **arrays))
        with pytest.raises(MixlabError) as refused:
            client.predict(run_id, file=bad)
        assert refused.value.status_code == 422
        assert refused.value.detail[0]["loc"] == ["body", "file", loc], refused.value.detail


@pytest.mark.parametrize(("which", "patch", "loc"), [
    ("one", {"task": "multitask"}, ["body", "task"]),
    ("two", {"task": "multitask", "task_weights": {"shape": 1.0}},
     ["body", "task_weights", "shape"]),
    ("two", {"task": "classification", "task_weights": {"class": 1.0}},
     ["body", "task_weights"]),
    ("two", {"task": "multitask", "training": {"epochs": 1,
                                               "checkpoint_metric": "val_acc.shape"}},
     ["body", "training", "checkpoint_metric"]),
    ("two", {"task": "multitask", "model": {"kind": "multimodal_vae", "latent_dim": 4}},
     ["body", "model", "kind"]),
])
def test_requests_that_do_not_fit_are_refused(stack, one_task: dict, two_tasks: dict,
                                              which: str, patch: dict, loc: list) -> None:
    dataset = one_task if which == "one" else two_tasks

    def total() -> int:
        return httpx.get(f"{stack.base_url}/v1/experiments",
                         headers=auth_headers()).json()["total"]

    before = total()
    body = {"dataset_id": dataset["id"], "model": MODEL, "training": {"epochs": 1}, **patch}
    response = httpx.post(f"{stack.base_url}/v1/experiments", json=body,
                          headers=auth_headers())
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]], response.text
    assert total() == before


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.usefixtures("worker")
def test_uploads_with_several_label_columns(api_client) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(0).random((90, 3)).astype(np.float32)
    colour = np.array(["red", "blue", "green"] * 30)
    response = api_client.post("/v1/datasets", files={"file": ("mt.npz", _npz(
        tabular=x, **{"label.colour": colour, "label.size": np.arange(90) % 2}))})
    ds = prepared(api_client, response)
    assert [(t["name"], [c["name"] for c in t["classes"]]) for t in ds["tasks"]] == [
        ("colour", ["blue", "green", "red"]), ("size", ["0", "1"])]
    assert [c["name"] for c in ds["classes"]] == ["blue", "green", "red"]

    response = api_client.post("/v1/datasets", files={"file": ("bad.npz", _npz(
        tabular=x, **{"label.colour": colour, "label.size": np.arange(89) % 2}))})
    # the array headers show it: refused at submission, naming the array
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [{
        "loc": ["body", "file", "label.size"], "type": "value_error",
        "msg": "label.size: has 89 entries but tabular has 90 samples"}]

    table = io.BytesIO()
    pq.write_table(pa.table({"f": x[:, 0], "c": colour, "s": np.arange(90) % 2}), table)
    response = api_client.post(
        "/v1/datasets", files={"file": ("mt.parquet", table.getvalue())},
        data={"spec": json.dumps({"tasks": {"colour": "c", "size": "s"}})})
    ds = prepared(api_client, response)
    assert [t["name"] for t in ds["tasks"]] == ["colour", "size"]
    assert [m["shape"] for m in ds["modalities"]] == [[1]]  # the label columns are no features
