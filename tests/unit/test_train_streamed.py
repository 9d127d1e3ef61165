"""Training streamed from shards (app.ml.training.streamed): the windowed order,
the background reader, and runs that equal the resident path's when every
shard fits one window."""

import threading
from pathlib import Path

import pytest
import torch

from app.ml.data import PreparedDataset, load_digits, load_synthetic
from app.ml.data.shards import FolderSource, ShardedDataset, open_sharded, write_sharded
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.resume import from_bytes
from app.ml.tasks import get_task
from app.ml.training import TrainHooks, TrainSpec, train
from app.ml.training.streamed import (
    BatchReader,
    EpochPlan,
    RowsView,
    StreamedClassifierObjective,
    contiguous_ranges,
    window_order,
)
from tests.unit.test_train_resume import Saver

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CNN = ModelSpec(width=8, depth=2)
MULTIMODAL = ModelSpec(kind="multimodal", fusion="late", dim=8, width=4, depth=1)


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


def sharded(ds: PreparedDataset, folder: Path, shard_bytes: int,
            window_bytes: int = 1024**3) -> ShardedDataset:
    write_sharded(ds, folder, shard_bytes)
    return open_sharded(FolderSource(folder), window_bytes=window_bytes, prefetch_batches=3)


def _blocks(sizes: list[int]) -> list[tuple[int, int, int]]:
    out, at = [], 0
    for k, n in enumerate(sizes):
        out.append((k, at, at + n))
        at += n
    return out


def test_one_window_is_the_resident_permutation():
    blocks = _blocks([30, 30, 7])
    plan = window_order(blocks, 3, 67, 16, torch.Generator().manual_seed(5))
    assert torch.equal(plan.order, torch.randperm(67, generator=torch.Generator().manual_seed(5)))
    assert plan.starts == [0] and plan.hints == {0: [0, 1, 2]}


def test_windows_shuffle_shards_then_rows_and_ask_for_the_next_window_early():
    sizes = [10] * 9 + [4]
    blocks = _blocks(sizes)
    plan = window_order(blocks, 3, 94, 8, torch.Generator().manual_seed(0))
    assert torch.equal(plan.order.sort().values, torch.arange(94))
    shard_of = torch.tensor([k for k, n in enumerate(sizes) for _ in range(n)])
    bounds = [*plan.starts, 94]
    assert len(plan.starts) == 4
    window_of = {}
    for w in range(4):
        shards = set(shard_of[plan.order[bounds[w]:bounds[w + 1]]].tolist())
        assert len(shards) == (3 if w < 3 else 1)  # a window spans its 3 shards, whole
        window_of.update({k: w for k in shards})
    hinted = [k for b in sorted(plan.hints) for k in plan.hints[b]]
    assert sorted(hinted) == list(range(10))  # every shard asked for once an epoch
    for b, shards in plan.hints.items():  # a window's shards a window ahead of it
        for k in shards:
            w = window_of[k]
            assert b <= bounds[w] // 8 and (w == 0 or b >= bounds[w - 1] // 8)
    again = window_order(blocks, 3, 94, 8, torch.Generator().manual_seed(0))
    assert torch.equal(plan.order, again.order)  # seeded


def test_rows_views_read_ranges_as_one_sequence(digits, tmp_path):
    data = sharded(digits, tmp_path, shard_bytes=64 * 100)
    column = data.inputs["image"]
    whole = data.to_resident().inputs["image"]
    ranges = [(50, 180), (400, 420), (1000, 1300)]
    view = RowsView(column, ranges)
    expected = torch.cat([whole[a:b] for a, b in ranges])
    assert view.shape == expected.shape and view.dim() == 4
    assert torch.equal(view[0:view.shape[0]], expected)
    assert torch.equal(view[120:160], expected[120:160])
    idx = torch.tensor([0, 149, 150, 449, 3])
    assert torch.equal(view[idx], expected[idx])
    assert contiguous_ranges(torch.tensor([3, 4, 5, 9, 10, 2])) == [(3, 6), (9, 11), (2, 3)]
    assert contiguous_ranges(torch.tensor([], dtype=torch.long)) == []


def _metrics(result) -> dict[str, float]:
    return {k: v for k, v in result.metrics.items() if k != "train_time_s"}


@pytest.mark.parametrize("case", ["cnn", "multimodal multilabel", "multitask", "vae"])
def test_streaming_equals_the_resident_run_when_the_shards_fit_one_window(tmp_path, case,
                                                                          caplog):
    if case == "cnn":
        data, model, task = load_digits(), CNN, "classification"
    elif case == "multitask":
        data, model, task = load_synthetic(num_samples=300, image_size=8, tasks=2,
                                           missing_rate=0.3), MULTIMODAL, "multitask"
    elif case == "vae":
        data, task = load_synthetic(num_samples=300, image_size=8, missing_rate=0.3), \
            "classification"
        model = ModelSpec(kind="multimodal_vae", dim=8, width=4, depth=1, latent_dim=4)
    else:
        data = load_synthetic(num_samples=300, image_size=8, labels_per_sample=2,
                              missing_rate=0.3)
        model, task = MULTIMODAL, "multilabel"
    spec = TrainSpec(epochs=2, batch_size=64, seed=4, device="cpu")
    if case == "vae":  # SGD at lr 0.1 diverges on a VAE (docs/representations.md)
        spec = TrainSpec(epochs=2, batch_size=64, seed=4, device="cpu", optimizer="adamw",
                         lr=3e-3)
    mixing = MixSpec("latent_mixup" if case == "vae" else "mixup", alpha=0.4)
    stream = sharded(data, tmp_path, shard_bytes=8_000)
    assert len(stream.shards) > 5
    resident = train(data, model, mixing, spec, task=task)
    with caplog.at_level("INFO", logger="app.ml.training.classify"):
        streamed = train(stream, model, mixing, spec, task=task)
    assert "training data: streamed from" in caplog.text  # not read whole first
    assert _metrics(streamed) == _metrics(resident)
    if case == "multitask":
        assert {"test_acc.class", "test_acc.group1"} <= set(streamed.metrics)
    if case == "vae":
        assert {"test_recon_image", "test_elbo", "test_acc"} <= set(streamed.metrics)


def test_a_streamed_run_over_many_windows_learns_and_resumes_exactly(digits, tmp_path):
    data = sharded(digits, tmp_path, shard_bytes=64 * 60, window_bytes=64 * 60 * 4)
    spec = TrainSpec(epochs=4, batch_size=32, seed=1, device="cpu", optimizer="adamw",
                     lr=1e-2, calibration="none")
    objective = StreamedClassifierObjective(data, CNN, MixSpec("mixup", alpha=0.4), spec,
                                            get_task("classification"), torch.device("cpu"))
    assert objective.window == 4 and len(objective.blocks) > 20
    assert "shuffle window 4 shards" in objective.describe_data()
    whole_hooks = Saver()
    whole = train(data, CNN, MixSpec("mixup", alpha=0.4), spec, whole_hooks)
    assert whole.metrics["test_acc"] > 0.7  # chance is 0.1; the resident run's ~0.85
    first = Saver(stop_after_epoch=2)
    assert train(data, CNN, MixSpec("mixup", alpha=0.4), spec, first).status == "stopped"
    rest = Saver()
    resumed = train(data, CNN, MixSpec("mixup", alpha=0.4), spec, rest,
                    resume=from_bytes(first.points[2]))
    assert _metrics(resumed) == _metrics(whole)
    assert not [t for t in threading.enumerate() if t.name == "shard-reader"]


class StopAt(TrainHooks):
    def __init__(self, steps: int) -> None:
        self.steps, self.seen = steps, 0

    def on_progress(self, progress) -> None:
        self.seen = progress.step

    def should_stop(self) -> bool:
        return self.seen >= self.steps


def test_a_run_stopped_mid_epoch_ends_its_reader(digits, tmp_path):
    data = sharded(digits, tmp_path, shard_bytes=64 * 60, window_bytes=64 * 60 * 2)
    result = train(data, CNN, MixSpec("mixup", alpha=0.4),
                   TrainSpec(epochs=3, batch_size=32, device="cpu"), StopAt(5))
    assert result.status == "stopped" and result.steps == 5
    assert not [t for t in threading.enumerate() if t.name == "shard-reader"]


def test_rows_the_reader_did_not_plan_are_read_on_the_spot(digits, tmp_path, caplog):
    data = sharded(digits, tmp_path, shard_bytes=64 * 60, window_bytes=64 * 60 * 2)
    spec = TrainSpec(epochs=1, batch_size=32, device="cpu")
    objective = StreamedClassifierObjective(data, CNN, MixSpec("mixup", alpha=0.4), spec,
                                            get_task("classification"), torch.device("cpu"))
    order = objective.epoch_order(torch.Generator().manual_seed(0))
    planned = objective.batch(order[:32])
    direct = objective.read(order[:32])
    assert torch.equal(planned[2], direct[2])
    other = order[100:132]  # e.g. a rank's share of the order, under data parallelism
    with caplog.at_level("WARNING"):
        batch, _, labels = objective.batch(other)
    assert "other rows than the shard reader prepared" in caplog.text
    assert torch.equal(labels, objective.train_labels[other])
    assert torch.equal(batch["image"], objective.normalize["image"](
        data.inputs["image"][other + objective.train_start]))
    objective.close()


def test_a_failed_read_surfaces_in_the_step():
    def broken(idx: torch.Tensor):
        raise OSError("shard vanished")

    plan = EpochPlan(torch.arange(10), [0], {})
    reader = BatchReader(broken, plan, 4, 2, lambda ks: None)
    with pytest.raises(OSError, match="shard vanished"):
        reader.next(torch.arange(4))
    reader.close()
