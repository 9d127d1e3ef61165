"""Training on data larger than memory: rows streamed from memory-mapped shards
(``app.ml.data.shards``) by a background reader, mixed on the batch as ever.

**Order.** Fully random rows over shards larger than the page cache would read
a page per sample. So an epoch takes the train shards in a random order, a
*window* of them at a time (``ShardedDataset.window_bytes``), and the rows of
each window in a random order: sample-level shuffling within a window,
shard-level across windows (a shuffle buffer, as WebDataset and tf.data do).
A batch then draws from the ≤ 2 windows it straddles rather than from the
whole split, and which samples can share a batch (and so be mixing partners)
is limited to a window. When every train shard fits in one window the order is
one ``randperm`` over all train rows, exactly the resident path's, and so is
the run.

**Reading.** A daemon thread reads each batch's rows ahead of the step
(``prefetch_batches`` of them, pinned when training on CUDA); as a window
starts it asks for the next window's shards, which a remote store fetches
into its bounded cache and a local one pages in (``madvise(WILLNEED)``), so
the step finds its rows in memory. The loop's order drives it: should the
loop ask for other rows than the reader prepared, those are read on the spot.

**Statistics and evaluation.** Normalisation is fitted on the train shards of
one window drawn with the run's seed (all of them when they fit, then equal to
the resident path's). Validation and test read their split in order, a batch
at a time, through the same maps.
"""

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.data.shards import ShardedColumn, ShardedDataset
from app.ml.training import normalization
from app.ml.training.batches import gather
from app.ml.training.classify import ClassifierObjective
from app.ml.training.evaluation import Split

log = logging.getLogger(__name__)

RawBatch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]
# the seed offset of the draw of the statistics' shards (the loop's streams use 0–4)
STATS_SEED_OFFSET = 5
# shards a streamed run keeps mapped at most
MAX_MAPPED = 512


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order of train positions, where in it each window starts, and
    at which batch to ask for which shards (indices into the dataset's list)."""
    order: torch.Tensor
    starts: list[int]
    hints: dict[int, list[int]]


def window_order(blocks: Sequence[tuple[int, int, int]], window: int, n_train: int,
                 batch_size: int, generator: torch.Generator) -> EpochPlan:
    """The epoch's order over train positions 0 … ``n_train - 1``. ``blocks``:
    (shard, first, stop) train positions per train shard; ``window``: shards a
    window holds."""
    if len(blocks) <= window:
        order = torch.randperm(n_train, generator=generator, device=generator.device)
        return EpochPlan(order, [0], {0: [k for k, _, _ in blocks]})
    perm = torch.randperm(len(blocks), generator=generator).tolist()
    windows = [perm[w:w + window] for w in range(0, len(perm), window)]
    parts: list[torch.Tensor] = []
    hints: dict[int, list[int]] = {0: [blocks[i][0] for i in windows[0]]}
    starts, at = [], 0
    for w, members in enumerate(windows):  # one pass per window, not per row
        rows = torch.cat([torch.arange(blocks[i][1], blocks[i][2]) for i in members])
        parts.append(rows[torch.randperm(rows.numel(), generator=generator)])
        if w + 1 < len(windows):  # the next window is paged in while this one trains
            hints.setdefault(at // batch_size, []).extend(blocks[i][0] for i in windows[w + 1])
        starts.append(at)
        at += rows.numel()
    return EpochPlan(torch.cat(parts), starts, hints)


class BatchReader:
    """Reads the batches of an epoch's plan ahead of the loop on a daemon thread,
    at most ``depth`` ahead; ``next(idx)`` hands over the batch of rows ``idx``."""

    def __init__(self, read: Callable[[torch.Tensor], RawBatch], plan: EpochPlan,
                 batch_size: int, depth: int, advise: Callable[[list[int]], None],
                 pin: bool = False) -> None:
        self._read, self._plan, self._bs = read, plan, batch_size
        self._advise, self._pin = advise, pin
        self._queue: queue.Queue[tuple[torch.Tensor, RawBatch] | BaseException] = \
            queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        order = self._plan.order
        try:
            for b, start in enumerate(range(0, order.shape[0], self._bs)):
                if b in self._plan.hints:
                    self._advise(self._plan.hints[b])
                idx = order[start:start + self._bs]
                inputs, present, labels = self._read(idx)
                if self._pin:
                    inputs = {m: x.pin_memory() for m, x in inputs.items()}
                if not self._put((idx, (inputs, present, labels))):
                    return
        except BaseException as exc:  # the step that wants this batch raises it
            self._put(exc)

    def _put(self, item: "tuple[torch.Tensor, RawBatch] | BaseException") -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self, idx: torch.Tensor) -> RawBatch | None:
        """The batch of rows ``idx``, or None when the reader prepared other rows
        (the caller reads them itself; the reader stops)."""
        if self._stop.is_set():
            return None
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        rows, batch = item
        if rows.shape != idx.shape or not torch.equal(rows, idx.to(rows.device)):
            log.warning("the loop asked for other rows than the shard reader prepared; "
                        "reading the rest of the epoch on the training thread")
            self.close()
            return None
        return batch

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a put, drop what was read ahead
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class RowsView:
    """Row ranges of a ``ShardedColumn`` as one sequence, read on demand: what the
    evaluation and the statistics code index (``shape``, ``dtype``, ``dim()``,
    contiguous slices and index tensors)."""

    def __init__(self, column: ShardedColumn, ranges: Sequence[tuple[int, int]]) -> None:
        self.column, self.ranges = column, [(a, b) for a, b in ranges if b > a]
        # where each range starts within the view
        self._offsets = torch.tensor([0, *torch.tensor([b - a for a, b in self.ranges],
                                                       dtype=torch.long).cumsum(0).tolist()])
        self.shape = torch.Size([int(self._offsets[-1]), *column.shape[1:]])
        self.dtype, self.device = column.dtype, column.device

    def dim(self) -> int:
        return len(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            return self.column.take(self._rows(key.long().cpu()))
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            return self.column.take(self._rows(torch.arange(start, stop, step)))
        parts = []
        for (a, b), at in zip(self.ranges, self._offsets[:-1].tolist(), strict=True):
            lo, hi = max(start, at), min(stop, at + b - a)
            if lo < hi:
                parts.append(self.column.range(a + lo - at, a + hi - at))
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else self.column.range(0, 0)

    def _rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Dataset rows of view positions."""
        which = torch.searchsorted(self._offsets, positions, right=True) - 1
        firsts = torch.tensor([a for a, _ in self.ranges], dtype=torch.long)
        return firsts[which] + positions - self._offsets[which]


def contiguous_ranges(rows: torch.Tensor) -> list[tuple[int, int]]:
    """Sorted rows as (start, stop) runs."""
    if rows.numel() == 0:
        return []
    rows = rows.cpu()
    breaks = torch.nonzero(rows[1:] != rows[:-1] + 1).squeeze(1) + 1
    starts = [0, *breaks.tolist()]
    stops = [*breaks.tolist(), rows.numel()]
    return [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in zip(starts, stops, strict=True)]


class StreamedClassifierObjective(ClassifierObjective):
    """``ClassifierObjective`` over a ``ShardedDataset``: the model, mixing, loss
    and metrics are the resident path's; rows come from the shards."""

    _reader: BatchReader | None = None

    def place(self, data: PreparedDataset, inputs: Mapping[str, torch.Tensor],
              present: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(data, ShardedDataset):
            raise TypeError("the streamed objective reads a ShardedDataset")
        self.data = data
        self.home = torch.device("cpu")  # the order is drawn on the host, rows read there
        self.columns: dict[str, ShardedColumn] = dict(inputs)  # type: ignore[arg-type]
        self.labels, self.present = data.labels, dict(present)
        start, stop = data.split_range("train")
        self.train_start, self.n_train = start, stop - start
        self.train_labels = self.labels[start:stop]
        self.train_present = {m: p[start:stop] for m, p in self.present.items()}
        shards = data.shards
        # (shard, first, stop) in train positions, one per train shard
        self.blocks = [(k, max(shards[k].start, start) - start, min(shards[k].stop, stop) - start)
                       for k in data.shards_in(start, stop)]
        row_bytes = sum(c.info.row_bytes for c in self.columns.values())
        largest = max((b - a for _, a, b in self.blocks), default=1) * max(1, row_bytes)
        self.window = max(1, data.window_bytes // largest)
        reader = data.reader
        assert reader is not None
        # the window being read and the next one paged in stay mapped (each map
        # holds a descriptor: at most MAX_MAPPED)
        reader.max_open = max(reader.max_open, min(MAX_MAPPED, 2 * self.window + 4))
        ranges = self._stats_ranges()
        self.normalize = {
            m: normalization.fit(self.kinds[m],
                                 RowsView(c, ranges),  # type: ignore[arg-type]
                                 self.device, self._masks_of(m, ranges), self.codes.get(m))
            for m, c in self.columns.items()}

    def _stats_ranges(self) -> list[tuple[int, int]]:
        """Dataset rows the normalisation is fitted on: the train shards of one
        window drawn with the run's seed (in row order), all when they fit."""
        if len(self.blocks) <= self.window:
            return [(self.train_start, self.train_start + self.n_train)]
        pick = torch.Generator().manual_seed(self.spec.seed + STATS_SEED_OFFSET)
        chosen = sorted(torch.randperm(len(self.blocks), generator=pick)[:self.window].tolist())
        return [(self.train_start + self.blocks[i][1], self.train_start + self.blocks[i][2])
                for i in chosen]

    def _masks_of(self, m: str, ranges: list[tuple[int, int]]) -> torch.Tensor | None:
        if m not in self.present:
            return None
        return torch.cat([self.present[m][a:b] for a, b in ranges])

    def describe_data(self) -> str:
        return (f"streamed from {len(self.data.shards)} shards ({len(self.blocks)} train), "
                f"shuffle window {self.window} shards")

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        self.close()
        plan = window_order(self.blocks, self.window, self.n_train, self.spec.batch_size,
                            generator)
        reader = self.data.reader
        assert reader is not None
        self._reader = BatchReader(self.read, plan, self.spec.batch_size,
                                   self.data.prefetch_batches, reader.advise,
                                   pin=self.device.type == "cuda")
        return plan.order

    def read(self, idx: torch.Tensor) -> RawBatch:
        """Training positions ``idx`` as host tensors (runs on the reader thread)."""
        rows = idx + self.train_start
        return ({m: c.take(rows) for m, c in self.columns.items()},
                {m: p[idx] for m, p in self.train_present.items()}, self.train_labels[idx])

    def batch(self, idx: torch.Tensor
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        raw = self._reader.next(idx) if self._reader is not None else None
        inputs, present, labels = raw if raw is not None else self.read(idx)
        batch, masks = gather(inputs, self.normalize, slice(None), self.device, present)
        return batch, masks, labels.to(self.device, non_blocking=True)

    def split(self, idx: torch.Tensor) -> Split:
        rows = idx.cpu()
        ranges = contiguous_ranges(rows)
        masks = {m: p[rows] for m, p in self.present.items()}
        views = {m: RowsView(c, ranges) for m, c in self.columns.items()}
        if self.multimodal:
            return Split(views, self.labels[rows], self.normalize, masks)  # type: ignore[arg-type]
        return Split(views["image"], self.labels[rows],  # type: ignore[arg-type]
                     self.normalize["image"], masks)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
