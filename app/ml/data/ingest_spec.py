"""How to turn the columns of a table (Parquet, or an archive's manifest) into modalities.

Framework-free dataclasses: ``app.schemas.ingest`` validates what a user posts
and builds these; a notebook can build them directly. ``IngestLimits`` caps
what one upload may unpack to.

A preparer reports how far it got through an optional ``ProgressFn``: it is
called with a stage (``unpacking``, ``reading``, ``finishing``) and the share of
that stage done, between chunks, never per sample. The callback may raise
``PreparationStopped`` to stop the preparation (a cancelled job).
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ModalityKind = Literal["image", "text", "audio", "tabular"]
RESERVED_NAMES = ("label", "label_clean", "split")
MULTILABEL_SEPARATOR = "|"  # multi-label cells given as text: "cat|dog"

ProgressFn = Callable[[str, float], None]


class PreparationStopped(Exception):
    """Raised by a ``ProgressFn`` to stop a preparation (its job was cancelled)."""


@dataclass(frozen=True)
class ModalitySpec:
    kind: ModalityKind
    column: str | None = None  # image / text / audio
    # image: output (H, W) after a bilinear resize; channels None = from the first image
    size: tuple[int, int] = (32, 32)
    channels: int | None = None
    # text: word-level vocabulary built from the train split
    max_length: int = 32
    vocab_size: int = 5000
    # audio: mono waveform; sample_rate None = all clips must share one rate
    sample_rate: int | None = None
    clip_seconds: float = 1.0
    # tabular
    columns: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    normalise: bool = True

    def source_columns(self) -> tuple[str, ...]:
        if self.kind == "tabular":
            return (*self.columns, *self.categorical)
        return (self.column,) if self.column else ()


@dataclass(frozen=True)
class IngestSpec:
    modalities: dict[str, ModalitySpec] = field(default_factory=dict)  # empty = infer
    label: str = "label"
    split: str | None = None  # None = use a "split" column if present, else stratify
    # labels are lists (a Parquet list column, a JSON list) or "a|b" text; list
    # columns and JSON lists turn it on by themselves
    multilabel: bool = False
    # multi-task: task name -> its label column, in order; the first task's column
    # is then ``label`` (the primary labels), whatever ``label`` was given as
    tasks: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tasks:
            object.__setattr__(self, "label", next(iter(self.tasks.values())))

    def label_columns(self) -> list[str]:
        """Every label column: the tasks' in order, or ``label``."""
        return list(self.tasks.values()) if self.tasks else [self.label]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as a job's spec is stored: ``tasks`` as [task, column] pairs,
        since a JSON object's key order is not kept (Postgres JSONB sorts keys)."""
        return {**asdict(self), "tasks": [[t, c] for t, c in self.tasks.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IngestSpec":
        """The inverse of ``to_dict`` (and of ``dataclasses.asdict``)."""
        mods = {}
        for name, m in data.get("modalities", {}).items():
            m = dict(m)
            for key in ("size", "columns", "categorical"):
                if key in m:
                    m[key] = tuple(m[key])
            mods[name] = ModalitySpec(**m)
        return cls(modalities=mods, label=data.get("label", "label"), split=data.get("split"),
                   multilabel=bool(data.get("multilabel", False)),
                   tasks=_pairs(data.get("tasks")))


def _pairs(tasks: Any) -> dict[str, str]:
    """``tasks`` as stored: [task, column] pairs (or a mapping, as ``asdict`` writes)."""
    items = tasks.items() if isinstance(tasks, dict) else (tasks or [])
    return {str(t): str(c) for t, c in items}


@dataclass(frozen=True)
class IngestLimits:
    max_rows: int = 2_000_000
    max_classes: int = 1000
    max_side: int = 512  # output image side
    max_image_pixels: int = 40_000_000  # decoded pixels of one source image
    max_text_length: int = 8192
    max_vocab: int = 1_000_000
    max_audio_length: int = 10_000_000  # output samples per clip
    max_features: int = 100_000
    max_frames: int = 256  # video frames per clip
    max_columns: int = 100_000  # Parquet leaf columns, checked from the footer
    max_categories: int = 10_000  # per categorical column
    max_errors: int = 20  # rows listed per problem; stop reading after this many problems
    batch_size: int = 1024  # rows decoded per chunk
    # archives
    max_files: int = 100_000
    max_total_bytes: int = 4 * 1024**3  # uncompressed, all members together
    max_member_bytes: int = 512 * 1024**2
    max_ratio: float = 100.0  # uncompressed / compressed, per zip member or whole tar.gz
    ratio_min_bytes: int = 1024**2  # smaller members are not ratio-checked
