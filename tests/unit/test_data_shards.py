"""The sharded prepared form (app.ml.data.shards) and how a process opens it
(app.services.prepared_data): round trips, row access across shards, chunked
writing, the remote cache's bound, and the resident-or-streamed choice."""

import gc
import uuid
from pathlib import Path

import fsspec
import pytest
import torch

from app.ml.data import PreparedDataset, load_digits, load_synthetic, to_bytes
from app.ml.data.shards import (
    INDEX,
    CachedSource,
    FolderSource,
    ShardedDataset,
    ShardWriter,
    open_sharded,
    write_sharded,
)
from app.schemas.datasets import PreviewRequest
from app.services import prepared_data, previews
from app.settings import Settings
from app.storage import ArtifactStore, prepared_key, shards_prefix


@pytest.fixture(scope="module")
def multimodal() -> PreparedDataset:
    """Four modalities, some samples missing one, multi-label."""
    return load_synthetic(num_samples=400, labels_per_sample=2, missing_rate=0.3)


def _same_by_split(a: PreparedDataset, b: PreparedDataset) -> None:
    """Equal split by split, row by row (positions within a split are kept)."""
    assert a.class_names == b.class_names and a.modality_kinds == b.modality_kinds
    assert list(a.inputs) == list(b.inputs) and sorted(a.present) == sorted(b.present)
    for name in ("train", "val", "test"):
        ra, rb = a.split_indices(name), b.split_indices(name)
        assert ra.numel() == rb.numel()
        for m in a.inputs:
            assert torch.equal(a.inputs[m][ra], b.inputs[m][rb]), (name, m)
        assert torch.equal(a.labels[ra], b.labels[rb])
        assert torch.equal(a.clean_labels[ra], b.clean_labels[rb])
        for m in a.present:
            assert torch.equal(a.present[m][ra].bool(), b.present[m][rb].bool())


def test_round_trip_groups_rows_by_split_and_keeps_everything(multimodal, tmp_path):
    size = write_sharded(multimodal, tmp_path, shard_bytes=20_000)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert INDEX in names and len(names) > 10  # small shards: many of them
    assert size == sum(p.stat().st_size for p in tmp_path.iterdir())
    sharded = open_sharded(FolderSource(tmp_path))
    assert isinstance(sharded, ShardedDataset) and sharded.multilabel
    # splits are contiguous, in order train, val, test
    assert torch.equal(sharded.split, sharded.split.sort().values)
    resident = sharded.to_resident()
    assert not isinstance(resident, ShardedDataset)
    _same_by_split(multimodal, resident)
    _same_by_split(multimodal, sharded)  # rows read through the maps
    # every row knows where it stood in the source
    assert torch.equal(resident.source_rows.sort().values, torch.arange(400))
    for m in multimodal.inputs:
        assert torch.equal(resident.inputs[m], multimodal.inputs[m][resident.source_rows])
    # what the API shows needs no rows read whole
    assert sharded.summary() == multimodal.summary()
    for m in multimodal.inputs:
        assert sharded.value_range(m) == multimodal.value_range(m)
    assert sharded.input_bytes == sum(x.numel() * x.element_size()
                                      for x in multimodal.inputs.values())


def test_columns_index_like_tensors_across_shard_boundaries(tmp_path):
    digits = load_digits()
    write_sharded(digits, tmp_path, shard_bytes=64 * 100)  # 100 rows a shard
    sharded = open_sharded(FolderSource(tmp_path))
    whole = sharded.to_resident().inputs["image"]
    column = sharded.inputs["image"]
    assert column.shape == whole.shape and column.dtype == whole.dtype and column.dim() == 4
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, whole.shape[0], (300,), generator=gen)
    assert torch.equal(column[rows], whole[rows])
    assert torch.equal(column[95:430], whole[95:430])
    assert torch.equal(column[-3:], whole[-3:])
    assert torch.equal(column[5], whole[5]) and torch.equal(column[-1], whole[-1])
    assert torch.equal(column[::7], whole[::7])
    mask = whole[:, 0, 0, 0] > 0
    assert torch.equal(column[mask], whole[mask])
    assert column[torch.zeros(0, dtype=torch.long)].shape == (0, 1, 8, 8)
    # what comes out is a copy: writing to it leaves the shards alone
    out = column[0:10]
    out.fill_(7)
    assert torch.equal(column[0:10], whole[0:10])


def test_chunked_writer_takes_rows_of_any_split_in_any_order(tmp_path):
    gen = torch.Generator().manual_seed(1)
    writer = ShardWriter(tmp_path, ["a", "b"], {"x": "tabular"}, {"seed": 1},
                         shard_bytes=16 * 50)  # 50 rows of 4 floats a shard
    parts = []
    for _ in range(7):
        x = torch.randn(33, 4, generator=gen)
        y = torch.randint(0, 2, (33,), generator=gen)
        split = torch.randint(0, 3, (33,), generator=gen).to(torch.uint8)
        writer.add({"x": x}, y, split)
        parts.append((x, y, split))
    writer.close()
    x, y, split = (torch.cat(t) for t in zip(*parts, strict=True))
    sharded = open_sharded(FolderSource(tmp_path))
    expected = PreparedDataset({"x": x}, y, y.clone(), split, ["a", "b"], {"x": "tabular"})
    _same_by_split(expected, sharded)
    assert sharded.provenance == {"seed": 1}
    rows = [s.rows for s in sharded.shards]
    assert max(rows) == 50 and sum(rows) == 231
    # each split's shards are full but its last one
    for name in ("train", "val", "test"):
        mine = [s.rows for s in sharded.shards if s.name.startswith(name)]
        assert all(r == 50 for r in mine[:-1])


def test_a_split_without_rows_and_presence_masks_write_and_read(tmp_path):
    x = torch.arange(12.0).view(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    present = torch.tensor([True, False, True, True, False, True])
    writer = ShardWriter(tmp_path, ["a", "b"], {"x": "tabular"}, shard_bytes=16)
    writer.add({"x": x}, y, torch.tensor([0, 0, 2, 0, 2, 0], dtype=torch.uint8),
               present={"x": present})
    writer.close()
    sharded = open_sharded(FolderSource(tmp_path))
    start, stop = sharded.split_range("val")
    assert start == stop and sharded.split_range("test") == (4, 6)
    assert sharded.present["x"].tolist() == [True, False, True, True, True, False]
    assert sharded.source_rows.tolist() == [0, 1, 3, 5, 2, 4]
    assert torch.equal(sharded.inputs["x"][0:6], x[sharded.source_rows])


def test_writer_and_reader_refuse_what_does_not_fit(tmp_path):
    writer = ShardWriter(tmp_path / "a", ["a"], {"x": "tabular"})
    with pytest.raises(ValueError, match="no rows"):
        writer.close()
    writer.add({"x": torch.zeros(2, 3)}, torch.zeros(2, dtype=torch.long),
               torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="first chunk"):
        writer.add({"x": torch.zeros(2, 4)}, torch.zeros(2, dtype=torch.long),
                   torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="modalities and masks"):
        writer.add({"y": torch.zeros(2, 3)}, torch.zeros(2, dtype=torch.long),
                   torch.zeros(2, dtype=torch.uint8))
    # a single blob (the older form) is not a sharded index
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / INDEX).write_bytes(to_bytes(load_digits()))
    with pytest.raises(ValueError, match="not a sharded prepared dataset"):
        open_sharded(FolderSource(tmp_path / "b"))


def test_remote_shards_are_cached_within_the_bound_and_removed(tmp_path):
    digits = load_digits()
    local = tmp_path / "local"
    write_sharded(digits, local, shard_bytes=64 * 100)
    fs = fsspec.filesystem("memory")
    for path in local.iterdir():
        fs.pipe(f"/remote/ds/{path.name}", path.read_bytes())
    shard_size = max(p.stat().st_size for p in local.iterdir() if p.name != INDEX)
    bound = 3 * shard_size
    source = CachedSource(fs, "/remote/ds", tmp_path / "cache", max_bytes=bound)
    sharded = open_sharded(source)
    folder = source.folder
    whole = sharded.inputs["image"][0:len(sharded.inputs["image"])]  # every shard, in turn
    assert torch.equal(whole, open_sharded(FolderSource(local)).to_resident().inputs["image"])
    cached = sum(p.stat().st_size for p in folder.iterdir())
    assert cached <= bound + shard_size  # the bound, plus the shard being read
    assert source.fetched > len(sharded.shards)  # the index and every shard
    sharded.close()
    assert not folder.exists()
    # a source nobody closes goes with its folder when collected
    other = CachedSource(fs, "/remote/ds", tmp_path / "cache", max_bytes=bound)
    other_folder = other.folder
    open_sharded(other).inputs["image"][0:5]
    # its prefetches done (a fetch in flight holds the source): then nothing does
    other._pool.shutdown(wait=True)
    assert other_folder.exists()
    del other
    gc.collect()
    assert not other_folder.exists()


def _store_with(tmp_path: Path, ds: PreparedDataset) -> tuple[ArtifactStore, str]:
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    key, size = prepared_data.write(store, "d1", ds, tmp_path / "work", shard_bytes=4096)
    assert key == f"{shards_prefix('d1')}/{INDEX}" and size > 0
    return store, key


def test_training_data_is_resident_under_the_budget_and_streamed_over_it(tmp_path):
    digits = load_digits()
    store, key = _store_with(tmp_path, digits)
    size = sum(x.numel() * x.element_size() for x in digits.inputs.values())
    fits = prepared_data.open_for_training(store, key, Settings(resident_data_bytes=size))
    assert not isinstance(fits, ShardedDataset)
    _same_by_split(digits, fits)
    over = prepared_data.open_for_training(
        store, key, Settings(resident_data_bytes=size - 1, shuffle_window_bytes=12345,
                             prefetch_batches=2))
    assert isinstance(over, ShardedDataset)
    assert over.window_bytes == 12345 and over.prefetch_batches == 2
    over.close()
    # a task that trains on resident data only says why it cannot
    with pytest.raises(ValueError, match="resident budget"):
        prepared_data.open_for_training(store, key, Settings(resident_data_bytes=0),
                                        stream=False)


def test_a_dataset_prepared_before_shards_still_loads(tmp_path):
    digits = load_digits()
    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    store.put(prepared_key("old"), to_bytes(digits))
    for opened in (prepared_data.open_prepared(store, prepared_key("old"), Settings()),
                   prepared_data.open_for_training(store, prepared_key("old"),
                                                   Settings(resident_data_bytes=0))):
        assert not isinstance(opened, ShardedDataset)
        assert all(torch.equal(opened.inputs[m], digits.inputs[m]) for m in digits.inputs)


def test_the_api_opens_a_sharded_dataset_without_reading_it(tmp_path, multimodal):
    store, key = _store_with(tmp_path, multimodal)
    opened = prepared_data.open_prepared(store, key, Settings())
    assert isinstance(opened, ShardedDataset)
    assert opened.reader is not None and not opened.reader._open  # nothing mapped yet
    rows = opened.split_indices("val")[:5]
    expected = multimodal.inputs["image"][multimodal.split_indices("val")[:5]]
    assert torch.equal(opened.inputs["image"][rows], expected)


def test_previews_of_a_sharded_dataset_are_those_of_the_resident_one(tmp_path, multimodal):
    write_sharded(multimodal, tmp_path, shard_bytes=8_000)
    sharded = open_sharded(FolderSource(tmp_path))
    request = PreviewRequest.model_validate({"method": "mixup", "n": 6, "seed": 3})
    dataset_id = uuid.uuid4()
    shown = [previews.describe(dataset_id, d, request, previews.compute(d, request), "")
             for d in (multimodal, sharded)]
    # the same samples, named by their rows in the source
    assert shown[0].model_dump() == shown[1].model_dump()
    for m in multimodal.inputs:
        assert (previews.render(multimodal, previews.compute(multimodal, request), 0, m)
                == previews.render(sharded, previews.compute(sharded, request), 0, m))
