"""Prepared datasets in the artifact store: written as shards, opened resident
or streamed.

A preparation writes the sharded form (``app.ml.data.shards``) under
``datasets/<id>/prepared/``, the shards first and the index last, so no reader
finds an index whose shards are missing; the dataset's ``artifact_key`` is the
index's key. Datasets prepared before shards existed hold one blob,
``datasets/<id>/prepared.safetensors``; they keep loading as before, read
whole, and are not migrated (registering the data again stores it sharded).

``open_prepared`` (the API's previews and predictions) opens a sharded dataset
without reading its rows; ``open_for_training`` (a worker) decides the path:
tensor-resident when the inputs fit ``MIXLAB_RESIDENT_DATA_BYTES``, streamed
from the shards when they do not. A local store's shards are mapped in place;
a remote one's are copied into a folder of the run's own under
``MIXLAB_SHARD_CACHE_DIR``, at most ``MIXLAB_SHARD_CACHE_BYTES``.
"""

import logging
from pathlib import Path

from app.ml.data import PreparedDataset, from_bytes
from app.ml.data.memory import default_resident_bytes, default_window_bytes
from app.ml.data.shards import (
    INDEX,
    CachedSource,
    FolderSource,
    ShardedDataset,
    ShardSource,
    open_sharded,
    write_sharded,
)
from app.settings import Settings
from app.storage import ArtifactStore, shards_prefix

log = logging.getLogger(__name__)
# a remote cache holds the window being read, the next one being fetched, and
# the odd shard validation reads: a window is at most a third of it
CACHE_WINDOWS = 3


def upload(store: ArtifactStore, dataset_id: object, folder: Path) -> str:
    """Put the sharded dataset in local ``folder`` in the store, the index last;
    its key."""
    prefix = shards_prefix(dataset_id)
    for path in sorted(folder.iterdir()):
        if path.name != INDEX:
            store.put_file(f"{prefix}/{path.name}", path)
    key = f"{prefix}/{INDEX}"
    store.put_file(key, folder / INDEX)
    return key


def write(store: ArtifactStore, dataset_id: object, ds: PreparedDataset, folder: Path,
          shard_bytes: int) -> tuple[str, int]:
    """Store ``ds`` sharded (written under ``folder`` first); its key and size."""
    size = write_sharded(ds, folder / "prepared", shard_bytes)
    return upload(store, dataset_id, folder / "prepared"), size


def is_sharded(key: str) -> bool:
    return key.endswith("/" + INDEX)


def resident_budget(settings: Settings) -> int:
    if settings.resident_data_bytes is not None:
        return settings.resident_data_bytes
    return default_resident_bytes()


def window_bytes(settings: Settings, remote: bool) -> int:
    window = settings.shuffle_window_bytes or default_window_bytes()
    return min(window, settings.shard_cache_bytes // CACHE_WINDOWS) if remote else window


def shard_source(store: ArtifactStore, key: str, settings: Settings) -> ShardSource:
    prefix = key.rsplit("/", 1)[0]
    local = store.local_path(prefix)
    if local is not None:
        return FolderSource(local)
    return CachedSource(store.fs, store.path(prefix), settings.resolved_shard_cache_dir,
                        settings.shard_cache_bytes)


def open_prepared(store: ArtifactStore, key: str, settings: Settings) -> PreparedDataset:
    """The prepared dataset at ``key``: a single blob read whole, or a sharded
    one opened (its rows are read when asked for)."""
    if not is_sharded(key):
        return from_bytes(store.get(key))
    source = shard_source(store, key, settings)
    return open_sharded(source,
                        window_bytes=window_bytes(settings, not isinstance(source, FolderSource)),
                        prefetch_batches=settings.prefetch_batches)


def open_for_training(store: ArtifactStore, key: str, settings: Settings,
                      stream: bool = True) -> PreparedDataset:
    """What a run trains on: tensor-resident when the inputs fit the resident
    budget (and a blob from before shards, always), else — where the task can
    (``stream``) — a ``ShardedDataset`` the loop streams. ``ValueError`` for a
    dataset that must be resident but does not fit."""
    data = open_prepared(store, key, settings)
    if not isinstance(data, ShardedDataset):
        log.info("training data %s: one blob, read whole (prepared before shards)", key)
        return data
    size, budget = data.input_bytes, resident_budget(settings)
    if size <= budget:
        log.info("training data %s: %s of inputs fit the resident budget of %s: "
                 "tensor-resident", key, _mib(size), _mib(budget))
        try:
            return data.to_resident()
        finally:
            data.close()
    if not stream:
        data.close()
        raise ValueError(f"the dataset's inputs ({_mib(size)}) exceed this worker's resident "
                         f"budget ({_mib(budget)}, MIXLAB_RESIDENT_DATA_BYTES) and this run "
                         "trains on tensor-resident data only (retrieval, or "
                         "training.world_size > 1)")
    log.info("training data %s: %s of inputs exceed the resident budget of %s: streamed "
             "from %d shards, shuffle window %s", key, _mib(size), _mib(budget),
             len(data.shards), _mib(data.window_bytes))
    return data


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"
