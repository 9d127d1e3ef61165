"""Where a run's weights start: ``model.weights`` or ``model.init_from_run``.

``model.weights`` names a safetensors file: ``file:///…`` under the operator's
import roots and ``s3://…`` under the project's bucket prefixes (the rules of
dataset URIs, ``app.services.sources``),
or ``store:KEY``, a file of one of the project's runs in the artifact store (its
checkpoint key, say). ``model.init_from_run`` names a succeeded run of the
project, whose checkpoint is the file.

The API checks a start at submission (``check``) from the file's header alone
(names and shapes, no tensor read) against the model built on the meta device
(no memory): a file none of whose tensors fits is refused, since the run would
silently train from scratch; a partial fit (another head size, a backbone for
transfer) is accepted and the run reports it (``report``). The worker resolves
the start again before training (``locate``: a link, a run may have changed
since) and loads it with safetensors only (``load_tensors``; never pickle).
"""

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from sqlalchemy.orm import Session

from app.db.models import Project, Run
from app.ml.data.errors import reason
from app.ml.models.weights import WeightMatch, best_match
from app.ml.safetensors_meta import header_shapes, read_header_from
from app.runs.status import RunStatus
from app.schemas.experiments import ExperimentCreate, ModelSpecIn
from app.services import limits, sources
from app.services.errors import FieldError, NotFoundError
from app.settings import Settings
from app.storage import ArtifactStore, get_store, url_to_fs

Loc = tuple[str | int, ...]
WEIGHTS_LOC: Loc = ("body", "model", "weights")
RUN_LOC: Loc = ("body", "model", "init_from_run")
SUFFIXES = (".safetensors",)  # the one weights format: no pickle, header-only checks
STORE_SCHEME = "store:"
# a store: key names a file of a run: runs/<run id>/…
_RUN_KEY = re.compile(r"^runs/([0-9a-fA-F-]{36})/[^\0]+$")
# bytes per parameter of the project's model_parameters limit a weights file may
# hold: float64 weights of the largest model the project may train
BYTES_PER_PARAMETER = 8
_SHOWN = 3  # mismatches named in a refusal


@dataclass(frozen=True)
class WeightsSource:
    """A resolved start; exactly one of ``path`` (a local file), ``uri`` (s3,
    through fsspec) and ``key`` (the artifact store) is set."""

    label: str  # what the run reports as its source: the URI as given, or run:<id>
    loc: Loc  # the request field it came from
    max_bytes: int
    path: Path | None = None
    uri: str | None = None
    key: str | None = None


def max_weights_bytes(settings: Settings, project: Project) -> int:
    """How large a weights file of ``project`` may be (a remote one is read whole
    into the worker's memory)."""
    return BYTES_PER_PARAMETER * limits.effective(settings, project).model_parameters


def locate(session: Session, settings: Settings, store: ArtifactStore,
           project_id: uuid.UUID, model: ModelSpecIn) -> WeightsSource | None:
    """The start ``model`` names, checked as far as can be done without reading
    it; None for random weights. ``NotFoundError`` for a run that is not the
    project's (404, as everywhere), ``FieldError`` for the rest."""
    if model.weights is None and model.init_from_run is None:
        return None
    project = session.get(Project, project_id)
    if project is None:
        raise NotFoundError("project", project_id)
    cap = max_weights_bytes(settings, project)
    if model.init_from_run is not None:
        run = _finished_run(session, project_id, model.init_from_run)
        assert run.checkpoint_key is not None
        return WeightsSource(f"run:{run.id}", RUN_LOC, cap, key=run.checkpoint_key)
    uri = str(model.weights)
    if uri.startswith(STORE_SCHEME):
        return WeightsSource(uri, WEIGHTS_LOC, cap,
                             key=_store_key(session, store, project_id, uri[len(STORE_SCHEME):]))
    resolved = sources.resolve(settings, uri, loc=WEIGHTS_LOC, suffixes=SUFFIXES, max_bytes=cap,
                               project=sources.ProjectRef(project.id, project.name))
    if resolved.path is not None:
        return WeightsSource(uri, WEIGHTS_LOC, cap, path=resolved.path)
    return WeightsSource(uri, WEIGHTS_LOC, cap, uri=uri)


def _finished_run(session: Session, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    run = session.get(Run, run_id)
    if run is None or run.experiment.project_id != project_id:
        raise NotFoundError("run", run_id)
    if run.status != RunStatus.SUCCEEDED:
        raise FieldError(RUN_LOC, f"run {run_id} is {run.status}: only a succeeded run's "
                                  "checkpoint can start another run")
    if run.checkpoint_key is None:
        raise FieldError(RUN_LOC, f"run {run_id} has no checkpoint")
    return run


def _store_key(session: Session, store: ArtifactStore, project_id: uuid.UUID,
               key: str) -> str:
    """A store: key, which must be a .safetensors file of one of the project's runs
    (another project's files are not found, like missing ones)."""
    match = _RUN_KEY.match(key)
    if match is None or ".." in key.split("/") or "//" in key:
        raise FieldError(WEIGHTS_LOC, f"store: names a file of one of the project's runs, "
                                      f"runs/<run id>/…, not {key!r}")
    if not key.lower().endswith(SUFFIXES):
        raise FieldError(WEIGHTS_LOC, f"{key!r} is not a .safetensors file")
    try:
        run_id = uuid.UUID(match.group(1))
    except ValueError:
        raise FieldError(WEIGHTS_LOC, f"{match.group(1)!r} is not a run id") from None
    run = session.get(Run, run_id)
    if run is None or run.experiment.project_id != project_id:
        raise NotFoundError("run", run_id)
    if not store.exists(key):
        raise FieldError(WEIGHTS_LOC, f"{STORE_SCHEME}{key}: no such file in the artifact "
                                      "store")
    return key


def _open(source: WeightsSource, store: ArtifactStore) -> BinaryIO:
    if source.path is not None:
        return source.path.open("rb")
    if source.key is not None:
        return store.open(source.key)
    assert source.uri is not None
    fs, path = url_to_fs(source.uri)
    size = int(fs.size(path) or 0)
    if size > source.max_bytes:
        raise FieldError(source.loc, f"{source.label}: too large ({size} bytes; limit "
                                     f"{source.max_bytes} bytes)")
    return fs.open(path, "rb")  # type: ignore[no-any-return]


def _unreadable(source: WeightsSource, exc: Exception) -> FieldError:
    return FieldError(source.loc, f"cannot read {source.label}: {reason(exc)}")


def read_shapes(source: WeightsSource, store: ArtifactStore) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the start's file, from its safetensors header alone
    (for s3 and a remote store, only the header's bytes are fetched)."""
    try:
        with _open(source, store) as f:
            return header_shapes(read_header_from(f, source.label), source.label)
    except FieldError:
        raise
    except ValueError as exc:  # not a safetensors file
        raise FieldError(source.loc, str(exc)) from exc
    except Exception as exc:  # fsspec backends raise their own error types
        raise _unreadable(source, exc) from exc


def load_tensors(source: WeightsSource, store: ArtifactStore) -> dict[str, torch.Tensor]:
    """The start's tensors on the CPU, through safetensors (no pickle): a local
    file is memory-mapped, a remote one read whole (within ``max_bytes``)."""
    try:
        local = source.path if source.path is not None else (
            store.local_path(source.key) if source.key is not None else None)
        if local is not None:
            return load_file(local, device="cpu")
        with _open(source, store) as f:
            blob = f.read(source.max_bytes + 1)
        if len(blob) > source.max_bytes:
            raise FieldError(source.loc, f"{source.label}: too large (over the limit of "
                                         f"{source.max_bytes} bytes)")
        return st_load(blob)
    except FieldError:
        raise
    except (SafetensorError, ValueError) as exc:
        raise FieldError(source.loc, f"{source.label} is not a safetensors file: {exc}") from exc
    except Exception as exc:
        raise _unreadable(source, exc) from exc


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def no_fit_message(label: str, match: WeightMatch, model_names: list[str]) -> str:
    """Why a file with no tensor that fits the model is refused, naming a few
    of its tensors (shape mismatches first) and of the model's."""
    found = len(match.mismatched) + len(match.unexpected)
    if not found:
        return f"{label} holds no tensors"
    parts = []
    if match.mismatched:
        shown = "; ".join(f"{name}: the model's {_shape(model)}, the file's {_shape(file)}"
                          for name, (model, file) in list(match.mismatched.items())[:_SHOWN])
        more = len(match.mismatched) - _SHOWN
        parts.append(f"{len(match.mismatched)} have another shape ({shown}"
                     + (f"; {more} more" if more > 0 else "") + ")")
    if match.unexpected:
        more = len(match.unexpected) - _SHOWN
        parts.append(f"{len(match.unexpected)} are not in the model ("
                     + ", ".join(match.unexpected[:_SHOWN])
                     + (f", {more} more" if more > 0 else "") + ")")
    return (f"none of the {found} tensors of {label} fits the model: " + "; ".join(parts)
            + f"; the model's tensors are named like {', '.join(model_names[:_SHOWN])}")


def check(session: Session, settings: Settings, project_id: uuid.UUID,
          request: ExperimentCreate, summary: dict[str, Any],
          store: ArtifactStore | None = None) -> None:
    """Refuse a submission whose start cannot load: a source that is not there or
    not the project's, a run that has not succeeded, or a file none of whose
    tensors fits the model. Reads headers only; writes nothing."""
    store = store or get_store()
    source = locate(session, settings, store, project_id, request.model)
    if source is None:
        return
    shapes = read_shapes(source, store)
    state = limits.meta_model(request, summary).state_dict()
    _, match = best_match(state, shapes)
    if not match.loaded:
        raise FieldError(source.loc, no_fit_message(source.label, match, list(state)))


def report(source: WeightsSource, init: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``init``: its source and what loaded (``WeightMatch.to_json``)."""
    return {"source": source.label, **init}
