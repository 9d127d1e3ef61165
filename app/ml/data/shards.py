"""Prepared data as shards read through memory maps: the form a worker trains
without holding it in memory.

A sharded prepared dataset is a folder (local, or in a remote store):

- ``index.safetensors``: every row's ``label``, ``label_clean``, ``split``, ``label.<task>``,
  ``present.<modality>`` and ``source_row`` (its position in the source's order,
  which previews report; a few bytes a row, read whole), and in its metadata
  the class names, modality kinds, provenance, each modality's per-sample
  shape, dtype and value range, and the list of shards in row order;
- ``<split>-<k>.safetensors``: one tensor per modality holding a run of
  consecutive rows of one split, about ``shard_bytes`` of them.

Rows are grouped by split — train, then val, then test, each keeping the order
its rows were added in — so a split is one contiguous range of rows and a
training epoch reads train shards only. Positions *within* a split are those of
the single-blob form (``prepared.py``), so a resident copy trains exactly as
that form did.

Shards are mapped read-only (``mmap`` ``ACCESS_READ``): their pages are the
kernel's page cache, which it drops under pressure, not the process's memory
(``RLIMIT_DATA`` does not count them; a private writable copy-on-write map
would). Tensors over a map are zero-copy views; everything this module hands
out of them is a copy, so nothing writes into a map.
"""

import json
import mmap
import shutil
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from app.ml.data.prepared import (
    PRESENT_PREFIX,
    SPLITS,
    TASK_LABEL_PREFIX,
    PreparedDataset,
    stored_tasks,
)
from app.ml.safetensors_meta import read_header

FORMAT = "mixlab.prepared-shards/1"
INDEX = "index.safetensors"
# ~64 MiB a shard: few files for ImageNet-sized sets (~2,400), yet a shuffle
# window of a few GiB still spans dozens of them
DEFAULT_SHARD_BYTES = 64 * 1024 * 1024
# open maps kept at once (each holds a file descriptor)
MAX_OPEN_SHARDS = 64

_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
    "F32": torch.float32, "F64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ColumnInfo:
    """One modality: per-sample shape, dtype, and the smallest and largest value
    stored (previews scale by them, text models size their vocabulary by them)."""
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    lo: float
    hi: float

    @property
    def row_bytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class ShardInfo:
    name: str
    start: int  # first row
    rows: int

    @property
    def stop(self) -> int:
        return self.start + self.rows


# --- where shard files come from --------------------------------------------------------

class ShardSource(Protocol):
    """Local files for the shards of one dataset."""

    def local(self, name: str) -> Path:
        """A local file holding ``name``, fetched first if the folder is remote."""

    def available(self, name: str) -> bool:
        """Whether ``local(name)`` answers without fetching."""

    def prefetch(self, names: Sequence[str]) -> None:
        """Start fetching ``names`` in the background (nothing for a local folder)."""

    def close(self) -> None: ...


class FolderSource:
    """Shards in a local folder, mapped in place."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def local(self, name: str) -> Path:
        return self.folder / name

    def available(self, name: str) -> bool:
        return True

    def prefetch(self, names: Sequence[str]) -> None:
        return None

    def close(self) -> None:
        return None


class CachedSource:
    """Shards of a remote folder (any fsspec filesystem: s3, …) copied on demand
    into ``cache_dir``, a folder of its own, holding at most ``max_bytes`` of
    them (and always the shard being read): the least recently used go first.
    A dropped shard still mapped stays readable until its map closes (unlinked
    files live on while mapped). ``close`` removes the folder."""

    def __init__(self, fs: Any, root: str, cache_dir: Path, max_bytes: int,
                 workers: int = 2) -> None:
        self.fs, self.root, self.max_bytes = fs, root.rstrip("/"), max_bytes
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(cache_dir) / f"shards-{uuid.uuid4().hex[:12]}"
        self.folder.mkdir()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._pending: dict[str, Future[Path]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shard-fetch")
        self.fetched = 0  # downloads so far (tests and logs)
        # the folder goes when this source does, closed or not (a cache that
        # dropped a dataset, a process that exits)
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def local(self, name: str) -> Path:
        with self._lock:
            if name in self._sizes:
                self._sizes.move_to_end(name)
                return self.folder / name
            future = self._pending.get(name) or self._submit(name)
        return future.result()

    def available(self, name: str) -> bool:
        with self._lock:
            return name in self._sizes

    def prefetch(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                if name not in self._sizes and name not in self._pending:
                    self._submit(name)

    def _submit(self, name: str) -> "Future[Path]":
        future = self._pool.submit(self._fetch, name)
        self._pending[name] = future
        return future

    def _fetch(self, name: str) -> Path:
        target = self.folder / name
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}"
        try:
            self.fs.get_file(f"{self.root}/{name}", str(tmp))
            tmp.rename(target)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._pending.pop(name, None)
            self._sizes[name] = target.stat().st_size
            self.fetched += 1
            self._evict(keep=name)
        return target

    def _evict(self, keep: str) -> None:
        while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
            oldest = next(n for n in self._sizes if n != keep)
            del self._sizes[oldest]
            (self.folder / oldest).unlink(missing_ok=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._remove()


# --- reading ---------------------------------------------------------------------------

class _Mapped:
    """One shard file mapped read-only, with a zero-copy tensor per modality."""

    def __init__(self, path: Path, shard: ShardInfo, columns: Mapping[str, ColumnInfo]) -> None:
        header = read_header(path)
        with path.open("rb") as fh:
            data_start = 8 + int.from_bytes(fh.read(8), "little")
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.views: dict[str, torch.Tensor] = {}
        with warnings.catch_warnings():
            # read-only memory: torch warns that it cannot write there; nothing does
            warnings.simplefilter("ignore", UserWarning)
            for name, info in columns.items():
                entry = header[name]
                begin = entry["data_offsets"][0]
                if (entry["shape"] != [shard.rows, *info.shape]
                        or _DTYPES[entry["dtype"]] != info.dtype):
                    raise ValueError(f"shard {shard.name}: {name} is {entry['dtype']} "
                                     f"{entry['shape']}, the index says {info.dtype} "
                                     f"{[shard.rows, *info.shape]}")
                count = shard.rows * _numel(info.shape)
                flat = (torch.frombuffer(self.map, dtype=info.dtype, count=count,
                                         offset=data_start + begin)
                        if count else torch.empty(0, dtype=info.dtype))
                self.views[name] = flat.view(shard.rows, *info.shape)

    def advise(self) -> None:
        """Ask the kernel to read the whole shard in now, in the background."""
        if hasattr(self.map, "madvise"):
            self.map.madvise(mmap.MADV_WILLNEED)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class ShardReader:
    """The shards of one dataset as memory maps, at most ``max_open`` open at once
    (least recently used closed first); safe to use from several threads."""

    def __init__(self, source: ShardSource, shards: list[ShardInfo],
                 columns: Mapping[str, ColumnInfo], max_open: int = MAX_OPEN_SHARDS) -> None:
        self.source, self.shards, self.columns = source, shards, dict(columns)
        self.max_open = max_open
        # row where each shard starts, and the end: rows → shard by searchsorted
        self.starts = torch.tensor([s.start for s in shards] + [shards[-1].stop if shards
                                                                else 0], dtype=torch.long)
        self._open: OrderedDict[int, _Mapped] = OrderedDict()
        self._lock = threading.Lock()

    def mapped(self, k: int) -> _Mapped:
        with self._lock:
            hit = self._open.get(k)
            if hit is not None:
                self._open.move_to_end(k)
                return hit
        opened = _Mapped(self.source.local(self.shards[k].name), self.shards[k], self.columns)
        with self._lock:
            self._open[k] = opened
            while len(self._open) > self.max_open:
                # views handed out keep their map alive; dropping ours only unmaps
                # it once they are gone
                self._open.popitem(last=False)
        return opened

    def advise(self, ks: Sequence[int]) -> None:
        """Shards ``ks`` are read next: fetch them (remote) or page them in (local)."""
        names = [self.shards[k].name for k in ks]
        self.source.prefetch(names)
        for k, name in zip(ks, names, strict=True):
            if self.source.available(name):
                self.mapped(k).advise()

    def shard_of(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.starts, rows, right=True) - 1

    def close(self) -> None:
        with self._lock:
            self._open.clear()
        self.source.close()


class ShardedColumn:
    """One modality's rows across the shards, tensor-like where the code that
    reads prepared data needs it: ``shape``, ``dtype``, ``dim()``, ``min()`` and
    ``max()`` (stored at writing time), and rows by ``[int | slice | index
    tensor]``, each returned as a new tensor read from the maps."""

    def __init__(self, reader: ShardReader, info: ColumnInfo) -> None:
        self.reader, self.info = reader, info
        self.shape = torch.Size([int(reader.starts[-1]), *info.shape])
        self.dtype = info.dtype
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return _numel(self.shape)

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def min(self) -> torch.Tensor:
        return torch.tensor(self.info.lo).to(self.dtype)

    def max(self) -> torch.Tensor:
        return torch.tensor(self.info.hi).to(self.dtype)

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self.take(torch.arange(start, stop, step))
            return self.range(start, stop)
        if isinstance(key, torch.Tensor):
            rows = key.nonzero().squeeze(1) if key.dtype == torch.bool else key.long()
            return self.take(rows.cpu())
        row = int(key) + (len(self) if int(key) < 0 else 0)
        return self.range(row, row + 1)[0]

    def range(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start`` … ``stop - 1`` (a sequential read); the next shard is
        fetched or paged in meanwhile, for a caller scanning a split."""
        out = torch.empty((max(0, stop - start), *self.info.shape), dtype=self.dtype)
        if stop <= start:
            return out
        reader = self.reader
        first = int(reader.shard_of(torch.tensor([start]))[0])
        last = int(reader.shard_of(torch.tensor([stop - 1]))[0])
        if last + 1 < len(reader.shards):
            reader.advise([last + 1])
        for k in range(first, last + 1):
            shard = reader.shards[k]
            lo, hi = max(start, shard.start), min(stop, shard.stop)
            out[lo - start:hi - start] = reader.mapped(k).views[self.info.name][
                lo - shard.start:hi - shard.start]
        return out

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (any order): one gather per shard they fall in."""
        out = torch.empty((rows.shape[0], *self.info.shape), dtype=self.dtype)
        if rows.numel() == 0:
            return out
        reader = self.reader
        shard = reader.shard_of(rows)
        local = rows - reader.starts[shard]
        # numpy gathers on the calling thread alone; torch would start an OpenMP
        # team of its own on the reader thread, beside the training's, which cost
        # the step ~20 % on 2 cores (torch for what numpy cannot hold: bfloat16)
        target = out.numpy() if self.dtype != torch.bfloat16 else None
        for k in torch.unique(shard).tolist():  # one pass per shard, not per row
            at = torch.nonzero(shard == k).squeeze(1)
            view = reader.mapped(k).views[self.info.name]
            if target is None:
                out[at] = view.index_select(0, local[at])
            else:
                target[at.numpy()] = view.numpy()[local[at].numpy()]
        return out


@dataclass
class ShardedDataset(PreparedDataset):
    """A prepared dataset whose ``inputs`` are ``ShardedColumn``s over memory-mapped
    shards; labels, split and presence masks are resident tensors. Everything
    that reads a few rows (previews, predictions, summaries) works on it as on
    a resident one; training streams it (``app.ml.training.streamed``), or
    ``to_resident`` reads it whole."""

    reader: ShardReader | None = None
    # stream settings the opener sets (a worker's, or the caller's)
    window_bytes: int = 1024**3
    prefetch_batches: int = 4

    @property
    def columns(self) -> dict[str, ShardedColumn]:
        return self.inputs  # type: ignore[return-value]

    @property
    def shards(self) -> list[ShardInfo]:
        assert self.reader is not None
        return self.reader.shards

    @property
    def input_bytes(self) -> int:
        return sum(c.info.row_bytes for c in self.columns.values()) * self.num_samples

    def split_range(self, name: str) -> tuple[int, int]:
        """The rows of split ``name``: ``start, stop`` (splits are contiguous)."""
        rows = self.split_indices(name)
        if rows.numel() == 0:
            return 0, 0
        return int(rows[0]), int(rows[-1]) + 1

    def shards_in(self, start: int, stop: int) -> list[int]:
        """Indices of the shards holding rows ``start`` … ``stop - 1``."""
        return [k for k, s in enumerate(self.shards) if s.start < stop and s.stop > start]

    def to_resident(self) -> PreparedDataset:
        """The whole dataset read into tensors, shard by shard (one copy of it at
        the peak, not two)."""
        try:
            inputs = {m: c.range(0, len(c)) for m, c in self.columns.items()}
        except RuntimeError as exc:
            if "can't allocate memory" not in str(exc):
                raise
            # torch's CPU allocator says RuntimeError; this is what it means
            raise MemoryError(f"the dataset's {self.input_bytes:,} bytes of inputs do not fit "
                              "in this process's memory: stream it instead (a lower "
                              "MIXLAB_RESIDENT_DATA_BYTES)") from exc
        return PreparedDataset(inputs=inputs, labels=self.labels,
                               clean_labels=self.clean_labels, split=self.split,
                               class_names=self.class_names, modality_kinds=self.modality_kinds,
                               provenance=self.provenance, present=self.present,
                               source_rows=self.source_rows, tasks=self.tasks,
                               task_labels=self.task_labels)

    def close(self) -> None:
        """Unmap the shards and drop a remote cache's folder."""
        if self.reader is not None:
            self.reader.close()


def read_index_meta(path: Path) -> dict[str, Any]:
    """The ``mixlab`` metadata of a prepared blob or index file, from its header."""
    return json.loads((read_header(path).get("__metadata__") or {}).get("mixlab", "{}"))


def open_sharded(source: ShardSource, *, window_bytes: int | None = None,
                 prefetch_batches: int | None = None) -> ShardedDataset:
    """The sharded dataset ``source`` holds; its shards are mapped when first read."""
    index = source.local(INDEX)
    meta = read_index_meta(index)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{index} is not a sharded prepared dataset ({meta.get('format')!r})")
    tensors = load_file(str(index))
    columns = {c["name"]: ColumnInfo(c["name"], tuple(c["shape"]), _DTYPES[c["dtype"]],
                                     float(c["min"]), float(c["max"]))
               for c in meta["modalities"]}
    shards, start = [], 0
    for s in meta["shards"]:
        shards.append(ShardInfo(s["name"], start, int(s["rows"])))
        start += int(s["rows"])
    if start != tensors["label"].shape[0]:
        raise ValueError(f"{index}: the shards hold {start} rows, the labels "
                         f"{tensors['label'].shape[0]}")
    split = tensors["split"]
    if split.numel() and bool((split[1:] < split[:-1]).any()):
        raise ValueError(f"{index}: rows are not grouped by split")
    reader = ShardReader(source, shards, columns)
    inputs: dict[str, Any] = {m: ShardedColumn(reader, info) for m, info in columns.items()}
    present = {k.removeprefix(PRESENT_PREFIX): v for k, v in sorted(tensors.items())
               if k.startswith(PRESENT_PREFIX)}
    data = ShardedDataset(inputs=inputs, labels=tensors["label"],
                          clean_labels=tensors["label_clean"], split=split,
                          class_names=list(meta["class_names"]),
                          modality_kinds=dict(meta["modality_kinds"]),
                          provenance=dict(meta.get("provenance", {})), present=present,
                          source_rows=tensors["source_row"], reader=reader,
                          **stored_tasks(meta, tensors))
    if window_bytes is not None:
        data.window_bytes = window_bytes
    if prefetch_batches is not None:
        data.prefetch_batches = prefetch_batches
    return data


# --- writing ---------------------------------------------------------------------------

@dataclass
class _SplitBuffer:
    """Rows of one split not yet in a shard, and everything of that split for the index."""
    pending: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    pending_rows: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    clean: list[torch.Tensor] = field(default_factory=list)
    source: list[torch.Tensor] = field(default_factory=list)
    present: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    tasks: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # labels of tasks 2…


class ShardWriter:
    """Writes a sharded prepared dataset into a local folder from chunks of rows
    of any splits, holding at most about a shard per split besides the chunk:
    a dataset larger than memory can be written from a generator.

    The first chunk fixes the modalities (their order, per-sample shapes and
    dtypes) and which have presence masks; ``close`` writes the index and
    returns the bytes written."""

    def __init__(self, folder: Path, class_names: list[str], modality_kinds: dict[str, str],
                 provenance: dict[str, Any] | None = None,
                 shard_bytes: int = DEFAULT_SHARD_BYTES,
                 tasks: Mapping[str, list[str]] | None = None) -> None:
        self.folder = Path(folder)
        # multi-task data: every chunk brings the labels of each task but the first
        self.tasks = {t: list(names) for t, names in (tasks or {}).items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.class_names, self.kinds = list(class_names), dict(modality_kinds)
        self.provenance = dict(provenance or {})
        self.shard_bytes = shard_bytes
        self.columns: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.masked: list[str] = []
        self.shard_rows = 0
        self.bytes = 0
        self.added = 0  # rows so far: a row's position in the source's order
        self._range: dict[str, list[float]] = {}
        self._splits = {code: _SplitBuffer() for code in range(len(SPLITS))}

    def add(self, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor,
            split: torch.Tensor, clean_labels: torch.Tensor | None = None,
            present: Mapping[str, torch.Tensor] | None = None,
            source_rows: torch.Tensor | None = None,
            task_labels: Mapping[str, torch.Tensor] | None = None) -> None:
        """Rows: ``inputs`` (modality → (n, …)), ``labels`` (n,) or (n, K), ``split``
        (n,) codes 0 train, 1 val, 2 test; clean labels default to ``labels``,
        the rows' positions in the source's order to the order they are added in."""
        present = dict(present or {})
        if not self.columns:
            self.columns = {m: (tuple(x.shape[1:]), x.dtype) for m, x in inputs.items()}
            self.masked = [m for m in inputs if m in present]
            row_bytes = sum(_numel(s) * torch.empty((), dtype=d).element_size()
                            for s, d in self.columns.values())
            self.shard_rows = max(1, self.shard_bytes // max(1, row_bytes))
        if list(inputs) != list(self.columns) or sorted(present) != sorted(self.masked):
            raise ValueError("every chunk must have the first chunk's modalities and masks")
        if not set(present) <= set(inputs):
            raise ValueError(f"presence masks for {sorted(set(present) - set(inputs))}, "
                             "which are not modalities")
        for m, x in inputs.items():
            if (tuple(x.shape[1:]), x.dtype) != self.columns[m]:
                raise ValueError(f"{m}: {x.dtype} {tuple(x.shape[1:])} rows, the first chunk "
                                 f"had {self.columns[m][1]} {self.columns[m][0]}")
            if x.numel():
                lo_t, hi_t = torch.aminmax(x) if x.dtype != torch.bool else (x.min(), x.max())
                lo, hi = float(lo_t), float(hi_t)
                seen = self._range.setdefault(m, [lo, hi])
                seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)
        task_labels = dict(task_labels or {})
        if sorted(task_labels) != sorted(list(self.tasks)[1:]):
            raise ValueError(f"chunk has labels of tasks {sorted(task_labels)}, expected "
                             f"{list(self.tasks)[1:]}")
        clean = labels if clean_labels is None else clean_labels
        n = int(split.shape[0])
        source = (torch.arange(self.added, self.added + n) if source_rows is None
                  else source_rows.long())
        self.added += n
        for code, buffer in self._splits.items():  # one pass per split, not per row
            rows = torch.nonzero(split == code).squeeze(1)
            if rows.numel() == 0:
                continue
            for m, x in inputs.items():
                buffer.pending.setdefault(m, []).append(x[rows])
            buffer.pending_rows += int(rows.numel())
            buffer.labels.append(labels[rows])
            buffer.clean.append(clean[rows])
            buffer.source.append(source[rows])
            for m in self.masked:
                buffer.present.setdefault(m, []).append(present[m][rows].bool())
            for t, y in task_labels.items():
                buffer.tasks.setdefault(t, []).append(y[rows])
            self._flush(code, final=False)

    def _flush(self, code: int, final: bool) -> None:
        """Write the split's full shards (and, ``final``, the rest), keeping what
        is left over pending."""
        buffer = self._splits[code]
        if buffer.pending_rows < self.shard_rows and not (final and buffer.pending_rows):
            return
        whole = {m: parts[0] if len(parts) == 1 else torch.cat(parts)
                 for m, parts in buffer.pending.items()}
        at = 0
        while buffer.pending_rows - at >= self.shard_rows or (final and buffer.pending_rows > at):
            take = min(self.shard_rows, buffer.pending_rows - at)
            name = f"{SPLITS[code]}-{len(buffer.shards):05d}.safetensors"
            path = self.folder / name
            save_file({m: x[at:at + take].contiguous() for m, x in whole.items()}, str(path))
            self.bytes += path.stat().st_size
            buffer.shards.append({"name": name, "rows": take})
            at += take
        buffer.pending = {m: [x[at:]] for m, x in whole.items()}
        buffer.pending_rows -= at

    def close(self) -> int:
        if not self.columns:
            raise ValueError("no rows were added")
        for code in self._splits:
            self._flush(code, final=True)
        parts = [self._splits[c] for c in sorted(self._splits)]
        tensors = {
            "label": torch.cat([t for b in parts for t in b.labels]).contiguous(),
            "label_clean": torch.cat([t for b in parts for t in b.clean]).contiguous(),
            "source_row": torch.cat([t for b in parts for t in b.source]).contiguous(),
            "split": torch.cat([torch.full((sum(t.shape[0] for t in b.labels),), code,
                                           dtype=torch.uint8)
                                for code, b in enumerate(parts)])}
        for m in self.masked:
            tensors[PRESENT_PREFIX + m] = torch.cat([t for b in parts
                                                     for t in b.present.get(m, [])])
        for task in list(self.tasks)[1:]:
            tensors[TASK_LABEL_PREFIX + task] = torch.cat(
                [t for b in parts for t in b.tasks.get(task, [])]).contiguous()
        modalities = [{"name": m, "shape": list(shape), "dtype": _safetensors_dtype(dtype),
                       "min": self._range.get(m, [0.0, 0.0])[0],
                       "max": self._range.get(m, [0.0, 0.0])[1]}
                      for m, (shape, dtype) in self.columns.items()]
        meta = {"format": FORMAT, "class_names": self.class_names,
                "modality_kinds": self.kinds, "provenance": self.provenance,
                "modalities": modalities, "shard_rows": self.shard_rows,
                "shards": [s for b in parts for s in b.shards]}
        if self.tasks:
            meta["tasks"] = [[t, names] for t, names in self.tasks.items()]
        path = self.folder / INDEX
        save_file(tensors, str(path), metadata={"mixlab": json.dumps(meta)})
        self.bytes += path.stat().st_size
        return self.bytes


def _safetensors_dtype(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)


def write_sharded(ds: PreparedDataset, folder: Path,
                  shard_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    """``ds`` as a sharded folder, a shard's worth of rows at a time; returns the
    bytes written."""
    writer = ShardWriter(folder, ds.class_names, ds.modality_kinds, ds.provenance, shard_bytes,
                         ds.tasks)
    row_bytes = sum(x[:1].numel() * x.element_size() for x in ds.inputs.values())
    step = max(1, shard_bytes // max(1, row_bytes))
    for code, name in enumerate(SPLITS):
        rows = ds.split_indices(name)
        for start in range(0, rows.numel(), step):
            chunk = rows[start:start + step]
            source = chunk if ds.source_rows is None else ds.source_rows[chunk]
            writer.add({m: x[chunk] for m, x in ds.inputs.items()}, ds.labels[chunk],
                       torch.full((chunk.numel(),), code, dtype=torch.uint8),
                       ds.clean_labels[chunk], {m: p[chunk] for m, p in ds.present.items()},
                       source, {t: y[chunk] for t, y in ds.task_labels.items()})
    return writer.close()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
