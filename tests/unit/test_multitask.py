"""Multi-task data (several label columns) and task multitask: ingestion of
each format, the prepared form, the loss, one λ and partner for every task's
targets, and per-task metrics."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from app.ml.data.archive import prepare_archive
from app.ml.data.errors import DataValidationError
from app.ml.data.npz import prepare_npz
from app.ml.data.parquet import prepare_parquet
from app.ml.data.prepared import from_bytes, to_bytes
from app.ml.data.shards import FolderSource, open_sharded, write_sharded
from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec, mix
from app.ml.models import ModelSpec
from app.ml.multitask import Head, Heads, mix_all_targets, multitask_loss, multitask_metrics
from app.ml.training.classify import train
from app.ml.training.spec import EarlyStopping, TrainSpec
from app.schemas.experiments import ExperimentCreate
from app.schemas.ingest import IngestSpecIn

TINY = {"num_samples": 240, "num_classes": 4, "image_size": 8, "tabular_features": 4,
        "modalities": ["image", "tabular"]}


# --- data --------------------------------------------------------------------------------

def test_synthetic_tasks_are_functions_of_the_class() -> None:
    data = load_synthetic(tasks=3, **TINY)
    assert list(data.tasks) == ["class", "group1", "group2"]
    assert data.tasks["class"] == data.class_names
    for task in ("group1", "group2"):
        y = data.labels_of(task)
        assert y.dtype == torch.int64 and y.shape == (240,)
        # one group per class: the task is a function of the class
        for c in range(4):
            assert len(set(y[data.labels == c].tolist())) == 1
        assert set(y.tolist()) == {0, 1}
    # the modalities do not change with the option
    single = load_synthetic(**TINY)
    assert torch.equal(single.inputs["image"], data.inputs["image"])
    assert not single.multitask and single.tasks == {}


def test_synthetic_tasks_refuse_multilabel() -> None:
    with pytest.raises(DataValidationError) as info:
        load_synthetic(tasks=2, labels_per_sample=2, **TINY)
    assert info.value.field == "source.options.tasks"


def test_prepared_blob_and_shards_keep_every_task() -> None:
    data = load_synthetic(tasks=3, **TINY)
    back = from_bytes(to_bytes(data))
    assert back.tasks == data.tasks and list(back.inputs) == list(data.inputs)
    for task in data.tasks:
        assert torch.equal(back.labels_of(task), data.labels_of(task))
    summary = data.summary()
    assert [t["name"] for t in summary["tasks"]] == ["class", "group1", "group2"]
    assert sum(c["count"] for c in summary["tasks"][1]["classes"]) == 240
    assert "tasks" not in load_synthetic(**TINY).summary()


def test_shards_keep_every_task(tmp_path: Path) -> None:
    data = load_synthetic(tasks=2, **TINY)
    write_sharded(data, tmp_path, shard_bytes=4096)
    sharded = open_sharded(FolderSource(tmp_path))
    assert sharded.tasks == data.tasks
    rows = sharded.source_rows  # rows are grouped by split there
    assert rows is not None
    resident = sharded.to_resident()
    assert torch.equal(resident.labels_of("group1"), data.labels_of("group1")[rows])
    assert torch.equal(resident.labels, data.labels[rows])


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_label_task_arrays(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((60, 3)).astype(np.float32)
    colour = np.array(["red", "blue", "green"] * 20)
    data = prepare_npz(_npz(tmp_path / "a.npz", tabular=x, **{
        "label.colour": colour, "label.size": np.arange(60) % 2}))
    assert data.tasks == {"colour": ["blue", "green", "red"], "size": ["0", "1"]}
    assert data.class_names == ["blue", "green", "red"]
    assert [data.class_names[i] for i in data.labels[:3]] == ["red", "blue", "green"]
    assert data.labels_of("size").tolist() == (np.arange(60) % 2).tolist()


@pytest.mark.parametrize(("arrays", "field", "words"), [
    ({"label.size": np.arange(59) % 2}, "label.size", "has 59 entries but tabular has 60"),
    ({"label.size": np.zeros((60, 2))}, "label.size", "expected shape (N,)"),
    ({"label.size": np.zeros(60, np.int64)}, "label.size", "at least 2 classes"),
    ({"label.size": np.arange(60) * 0.5}, "label.size", "is not integer or string"),
    ({"label": np.arange(60) % 2}, "label", "not both"),
    ({"class_names": np.array(["a", "b"])}, "class_names", "does not apply"),
    ({"label.a b": np.arange(60) % 2}, "label.a b", "unexpected array"),
])
def test_npz_task_errors_name_the_array(tmp_path: Path, arrays: dict, field: str,
                                        words: str) -> None:
    x = np.random.default_rng(0).random((60, 3)).astype(np.float32)
    given = {"tabular": x, "label.colour": np.array(["r", "g", "b"] * 20), **arrays}
    with pytest.raises(DataValidationError) as info:
        prepare_npz(_npz(tmp_path / "bad.npz", **given))
    assert info.value.field == field and words in str(info.value)


def _table(n: int = 60) -> dict[str, list]:
    return {"f1": [float(i) for i in range(n)], "colour": ["r", "g", "b"] * (n // 3),
            "size": [i % 2 for i in range(n)]}


def test_parquet_task_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(_table()), tmp_path / "t.parquet")
    spec = IngestSpecIn.model_validate({"tasks": {"colour": "colour", "size": "size"}})
    data = prepare_parquet(tmp_path / "t.parquet", spec.to_spec())
    assert data.tasks == {"colour": ["b", "g", "r"], "size": ["0", "1"]}
    # the label columns are not features
    assert list(data.inputs) == ["tabular"] and data.inputs["tabular"].shape == (60, 1)
    assert data.labels_of("size").tolist() == _table()["size"]


def test_manifest_task_columns(tmp_path: Path) -> None:
    rows = _table()
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("manifest.jsonl", "".join(
            json.dumps({k: rows[k][i] for k in rows}) + "\n" for i in range(60)))
    spec = IngestSpecIn.model_validate({"tasks": {"colour": "colour", "size": "size"}})
    data = prepare_archive(tmp_path / "a.zip", spec.to_spec())
    assert data.tasks == {"colour": ["b", "g", "r"], "size": ["0", "1"]}
    assert data.labels_of("size").tolist() == rows["size"]


def test_table_task_column_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _table()
    table["size"][7] = None  # type: ignore[call-overload]
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    spec = IngestSpecIn.model_validate({"tasks": {"colour": "colour", "size": "size"}})
    with pytest.raises(DataValidationError) as info:
        prepare_parquet(tmp_path / "t.parquet", spec.to_spec())
    assert info.value.field == "size" and "missing" in str(info.value)
    absent = IngestSpecIn.model_validate({"tasks": {"colour": "colour", "shape": "shape"}})
    with pytest.raises(DataValidationError) as info:
        prepare_parquet(tmp_path / "t.parquet", absent.to_spec())
    assert info.value.field == "shape" and "no such column" in str(info.value)
    with pytest.raises(ValidationError, match="not both"):
        IngestSpecIn.model_validate({"label": "colour", "tasks": {"size": "size"}})


# --- loss and mixing ---------------------------------------------------------------------

HEADS = Heads((Head("a", ("0", "1", "2"), 0.5), Head("b", ("x", "y"), 2.0),
               Head("c", ("p", "q", "r", "s"), 1.0)))


def test_loss_is_the_weighted_sum_of_soft_cross_entropies() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=g)
    targets = torch.rand(6, 9, generator=g)
    blocks = [(0, 3), (3, 5), (5, 9)]
    for lo, hi in blocks:  # each task's targets a distribution
        targets[:, lo:hi] /= targets[:, lo:hi].sum(dim=1, keepdim=True)
    expected = 0.0
    for (lo, hi), weight in zip(blocks, (0.5, 2.0, 1.0), strict=True):
        z = logits[:, lo:hi]
        log_p = z - z.exp().sum(dim=1, keepdim=True).log()
        expected += weight * float(-(targets[:, lo:hi] * log_p).sum(dim=1).mean())
    assert float(multitask_loss(logits, targets, HEADS)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["mixup", "cutmix", "cross_modal", "manifold_mixup",
                                    "mixup_cutmix"])
def test_every_task_mixes_with_the_same_lam_and_partner(method: str) -> None:
    n = 16
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(n, 3, 8, 8, generator=g), "tabular": torch.rand(n, 4)}
    labels = torch.stack([torch.randint(0, len(h.classes), (n,), generator=g)
                          for h in HEADS.heads], dim=1)
    mixed = mix(batch, labels[:, 0], MixSpec(method=method, alpha=1.0),
                torch.Generator().manual_seed(2), 3, kinds={"image": "image",
                                                            "tabular": "tabular"})
    targets = mix_all_targets(mixed, labels, HEADS, 0.0)
    assert targets.shape == (n, 9)
    lam = mixed.lam.float()[:, None]
    assert not torch.all(mixed.index == torch.arange(n))  # samples were paired
    for t, block in enumerate(HEADS.blocks()):
        k = len(HEADS.heads[t].classes)
        onehot = F.one_hot(labels[:, t], k).float()
        want = lam * onehot + (1 - lam) * onehot[mixed.index]
        torch.testing.assert_close(targets[:, block], want)


def test_metrics_per_task_and_their_mean() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 9, generator=g)
    labels = torch.stack([torch.randint(0, len(h.classes), (50,), generator=g)
                          for h in HEADS.heads], dim=1)
    metrics = multitask_metrics(logits, labels, HEADS)
    accs = []
    for t, (head, block) in enumerate(zip(HEADS.heads, HEADS.blocks(), strict=True)):
        acc = float((logits[:, block].argmax(1) == labels[:, t]).float().mean())
        assert float(metrics[f"acc.{head.name}"]) == pytest.approx(acc)
        accs.append(acc)
    assert float(metrics["acc"]) == pytest.approx(sum(accs) / 3)
    assert {f"{m}.{h}" for m in ("loss", "ece", "f1_macro", "brier") for h in "abc"} \
        <= set(metrics)


# --- training ----------------------------------------------------------------------------

SPEC = TrainSpec(epochs=2, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def two_tasks():  # type: ignore[no-untyped-def]
    return load_synthetic(tasks=2, **TINY)


def test_train_reports_every_task(two_tasks) -> None:  # type: ignore[no-untyped-def]
    spec = TrainSpec(epochs=2, batch_size=32, seed=0, checkpoint="best",
                     checkpoint_metric="val_acc.group1",
                     early_stopping=EarlyStopping(metric="val_loss.class", patience=5))
    result = train(two_tasks, ModelSpec(kind="multimodal", dim=8, width=4, depth=1),
                   MixSpec(method="mixup", alpha=1.0), spec, task="multitask",
                   task_weights={"group1": 2.0})
    assert result.status == "completed"
    m = result.metrics
    for key in ("val_acc.class", "val_acc.group1", "test_acc.class", "test_acc.group1",
                "test_ece.class", "test_ece.group1", "test_loss.group1", "test_f1_macro.class"):
        assert key in m, key
    assert m["test_acc"] == pytest.approx((m["test_acc.class"] + m["test_acc.group1"]) / 2,
                                          abs=1e-6)
    report = result.report
    assert report is not None and report["task"] == "multitask"
    test_size = int((two_tasks.split == 2).sum())
    for task, classes in two_tasks.tasks.items():
        entry = report["tasks"][task]
        assert entry["class_names"] == classes
        assert sum(map(sum, entry["confusion_matrix"])) == test_size
    assert report["confusion_matrix"] == report["tasks"]["class"]["confusion_matrix"]


def test_train_image_model_multitask(two_tasks) -> None:  # type: ignore[no-untyped-def]
    result = train(two_tasks, ModelSpec(kind="cnn", width=4), MixSpec(method="cutmix"),
                   TrainSpec(epochs=1, batch_size=32), task="multitask")
    assert {"test_acc.class", "test_acc.group1"} <= set(result.metrics)


@pytest.mark.parametrize(("data", "task", "weights", "words"), [
    ("single", "multitask", None, "task: task 'multitask' needs a dataset with several"),
    ("multi", "multitask", {"shape": 1.0}, "task_weights.shape: the dataset has no task"),
    ("multi", "classification", {"class": 1.0}, "task_weights: applies to task multitask"),
])
def test_train_refuses_what_does_not_fit(two_tasks, data: str, task: str,  # type: ignore[no-untyped-def]
                                         weights: dict | None, words: str) -> None:
    dataset = two_tasks if data == "multi" else load_synthetic(**TINY)
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        train(dataset, ModelSpec(kind="multimodal", dim=8), MixSpec(method="mixup"), SPEC,
              task=task, task_weights=weights)


def test_a_latent_model_does_not_train_multitask(two_tasks) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"^model\.kind: task multitask is not trained by a "
                                         r"multimodal_vae model"):
        train(two_tasks, ModelSpec(kind="multimodal_vae", dim=8, latent_dim=4),
              MixSpec(method="none"), SPEC, task="multitask")


def test_experiment_schema_takes_task_weights_and_task_metrics() -> None:
    body = ExperimentCreate.model_validate({
        "dataset_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "task": "multitask",
        "task_weights": {"class": 0.5},
        "training": {"checkpoint": "best", "checkpoint_metric": "val_acc.group1"}})
    assert body.task_weights == {"class": 0.5}
    with pytest.raises(ValidationError) as info:
        ExperimentCreate.model_validate({
            "dataset_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "task": "multitask",
            "task_weights": {"class": -1}})
    assert info.value.errors()[0]["loc"] == ("task_weights", "class")


def test_a_task_metric_keeps_its_direction() -> None:
    from app.ml.training.spec import metric_mode

    assert metric_mode("val_loss.class") == "min" and metric_mode("val_ece.group1") == "min"
    assert metric_mode("val_acc.class") == "max" and metric_mode("val_loss") == "min"
    assert metric_mode("val_recon_image") == "min" and metric_mode("val_elbo") == "max"


def test_a_multitask_checkpoint_loads_with_its_heads(two_tasks) -> None:  # type: ignore[no-untyped-def]
    from app.ml.checkpoint import load_model
    from app.ml.training.hooks import TrainHooks

    saved: dict = {}

    class Keep(TrainHooks):
        def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                          metadata: dict[str, str]) -> None:
            saved.update(state=tensors, metadata=metadata)

    result = train(two_tasks, ModelSpec(kind="multimodal", dim=8), MixSpec(method="mixup"),
                   TrainSpec(epochs=1, batch_size=32), Keep(), task="multitask")
    assert result.status == "completed" and saved, "no checkpoint was handed to the hooks"
    loaded = load_model(saved["state"], saved["metadata"])
    assert loaded.heads is not None and loaded.heads.names == ["class", "group1"]
    rows = two_tasks.split_indices("test")
    probs = loaded.predict_proba({m: x[rows] for m, x in two_tasks.inputs.items()})
    assert probs.shape == (len(rows), 4 + 2)
    torch.testing.assert_close(probs[:, :4].sum(1), torch.ones(len(rows)))
    torch.testing.assert_close(probs[:, 4:].sum(1), torch.ones(len(rows)))


def test_an_ingest_spec_with_tasks_survives_its_json() -> None:
    from dataclasses import asdict

    from app.ml.data.ingest_spec import IngestSpec

    spec = IngestSpecIn.model_validate({"tasks": {"colour": "c", "size": "s"}}).to_spec()
    assert spec.label == "c" and spec.label_columns() == ["c", "s"]
    stored = spec.to_dict()
    assert stored["tasks"] == [["colour", "c"], ["size", "s"]]  # JSONB would sort an object
    again = IngestSpec.from_dict(json.loads(json.dumps(stored)))
    assert again == spec and list(again.tasks) == ["colour", "size"]
    assert IngestSpec.from_dict(asdict(spec)) == spec


def test_sweeps_reach_task_weights_and_order_task_metrics() -> None:
    from app.services.sweeps import order_of, path_problem

    assert path_problem("task_weights.group1") is None
    assert "is not a field" in (path_problem("task_weights.group1.x") or "")
    assert order_of("test_loss.class") == "asc" and order_of("test_acc.class") == "desc"


# --- data-parallel: the follower a rank process imports ----------------------------------

DDP_MODEL = ModelSpec(kind="multimodal", dim=8, width=4, depth=1)


def _ddp_spec(world_size: int) -> TrainSpec:
    return TrainSpec(epochs=2, batch_size=32, seed=0, device="cpu", world_size=world_size)


def follow_multitask(rank: int, rendezvous, weights: dict) -> dict:  # type: ignore[no-untyped-def]
    """Rank ``rank`` of a two-process multitask run (``launch_local`` imports it)."""
    from app.ml.training.distributed import joined

    torch.set_num_threads(1)
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        result = train(load_synthetic(tasks=2, **TINY), DDP_MODEL, MixSpec(method="mixup"),
                       _ddp_spec(rendezvous.world_size), task="multitask", ranks=ranks,
                       task_weights=weights)
    return {"status": result.status, "metrics": result.metrics}


def test_multitask_trains_data_parallel(two_tasks) -> None:  # type: ignore[no-untyped-def]
    from app.ml.training.launch import launch_local

    weights = {"group1": 2.0}

    def lead(ranks):  # type: ignore[no-untyped-def]
        return train(two_tasks, DDP_MODEL, MixSpec(method="mixup"), _ddp_spec(2),
                     task="multitask", ranks=ranks, task_weights=weights)

    result, followers = launch_local(lead, follow_multitask, (weights,), 2,
                                     torch.device("cpu"), 120.0)
    assert result.status == "completed" and followers[1]["status"] == "completed"
    # the ranks hold one model and validate it together: the same figures per task
    for key in ("val_acc.class", "val_acc.group1", "val_loss.group1", "val_acc"):
        assert followers[1]["metrics"][key] == pytest.approx(result.metrics[key]), key
    assert {"test_acc.class", "test_acc.group1"} <= set(result.metrics)  # rank 0 tests
