"""Sweeps: one experiment (and run) per point of a grid and/or a random space over
an experiment spec's dotted fields.

Every point is validated as an experiment is (``ExperimentCreate``, then the
dataset checks of ``app.services.experiments``) before anything is stored; the
project's ``queued_runs`` limit counts the sweep's runs together; the runs are
published after the commit."""

import contextlib
import copy
import itertools
import json
import math
import random
import statistics
import types
import typing
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.db.models import Dataset, Experiment, Run, Sweep
from app.ml.training.spec import metric_mode
from app.runs import service as run_service
from app.runs.status import LIVE, TERMINAL, RunStatus
from app.schemas.experiments import ExperimentCreate
from app.schemas.sweeps import MAX_POINTS, Distribution, SweepCreate
from app.services import datasets, experiments, limits
from app.services.errors import (
    ConflictError,
    FieldError,
    FieldErrorCollector,
    Loc,
    NotFoundError,
)
from app.settings import get_settings
from app.storage import ArtifactStore

SEED_PATH = "training.seed"
# errors reported for one sweep at most (the first of each field)
MAX_ERRORS = 20

Point = dict[str, Any]


# --- paths and points ------------------------------------------------------------------

def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X | None`` too), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _is_dict(annotation: Any) -> bool:
    """A dict field, optional or not (``task_weights``: dict | None)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(typing.get_origin(a) is dict for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is dict


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a dotted field of an experiment spec, or None."""
    model: type[BaseModel] | None = ExperimentCreate
    parts = path.split(".")
    for i, part in enumerate(parts):
        if model is None:
            return f"{path} is not a field of an experiment spec: {'.'.join(parts[:i])} " \
                   "has no fields"
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:i]) or "the spec"
            known = ", ".join(sorted(model.model_fields))
            return f"{path} is not a field of an experiment spec: {where} has no field " \
                   f"{part!r} (it has {known})"
        if _is_dict(field.annotation) and i < len(parts) - 1:
            return None if i == len(parts) - 2 else \
                f"{path} is not a field of an experiment spec"
        model = _model_of(field.annotation)
    return None


def _draw(rng: random.Random, dist: Distribution) -> Any:
    if dist.uniform is not None:
        return rng.uniform(*dist.uniform)
    if dist.log_uniform is not None:
        low, high = dist.log_uniform
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if dist.int_uniform is not None:
        return rng.randint(*dist.int_uniform)
    assert dist.choice is not None
    return rng.choice(dist.choice)


def points(request: SweepCreate) -> list[Point]:
    """The grid's combinations (in the grid's order, the last axis fastest), each
    combined with each random draw; the draws depend on ``random.seed`` only."""
    grid = request.grid or {}
    grid_points = [dict(zip(grid, values, strict=True))
                   for values in itertools.product(*grid.values())] if grid else [{}]
    draws: list[Point] = [{}]
    if request.random is not None:
        rng = random.Random(request.random.seed)
        draws = [{path: _draw(rng, dist) for path, dist in request.random.space.items()}
                 for _ in range(request.random.n)]
    return [{**g, **d} for g in grid_points for d in draws]


def _axis_locs(request: SweepCreate) -> dict[str, Loc]:
    locs: dict[str, Loc] = {p: ("body", "grid", p) for p in request.grid or {}}
    if request.random is not None:
        locs.update({p: ("body", "random", "space", p) for p in request.random.space})
    return locs


def _apply(base: dict[str, Any], point: Point) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    for path, value in point.items():
        *parents, leaf = path.split(".")
        node = spec
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return spec


def _text(point: Point) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in point.items()) or "the base"


class _Located:
    """Field errors of one sweep: each (loc inside an experiment spec, message) of a
    point goes to the axis that set it, else to ``base``."""

    def __init__(self, request: SweepCreate, total: int) -> None:
        self.axes = _axis_locs(request)
        self.total = total
        self.found = FieldErrorCollector()

    def add(self, index: int, point: Point, loc: tuple[str | int, ...], message: str) -> None:
        dotted = ".".join(str(p) for p in loc)
        target: Loc = ("body", "base", *loc)
        for path, axis_loc in self.axes.items():
            if path in point and (dotted == path or dotted.startswith(path + ".")
                                  or path.startswith(dotted + ".") or not dotted):
                target = axis_loc
                break
        if len(self.found.errors) < MAX_ERRORS:
            self.found.add(target, f"combination {index + 1} of {self.total} ({_text(point)}): "
                                   f"{message}")


def _check_axes(request: SweepCreate) -> None:
    found = FieldErrorCollector()
    for path, loc in _axis_locs(request).items():
        problem = path_problem(path)
        if problem is not None:
            found.add(loc, problem)
    if request.grid and request.random is not None:
        for path in set(request.grid) & set(request.random.space):
            found.add(("body", "random", "space", path), f"{path} is an axis of the grid too")
    found.raise_if_any()


def _dataset(session: Session, project_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset | None:
    dataset = session.get(Dataset, dataset_id)
    return dataset if dataset is not None and dataset.project_id == project_id else None


def create(session: Session, project_id: uuid.UUID,
           request: SweepCreate) -> tuple[Sweep, list[Run]]:
    """Validate every point, count them against the queue, store the sweep with an
    experiment and run per point, commit, then publish the runs."""
    _check_axes(request)
    base = dict(request.base)
    if request.dataset_id is not None:
        base["dataset_id"] = str(request.dataset_id)
    combos = points(request)
    if len(combos) > MAX_POINTS:
        raise FieldError(("body", "grid" if request.grid else "random"),
                         f"the sweep has {len(combos)} points; at most {MAX_POINTS}")
    located = _Located(request, len(combos))
    specs: list[ExperimentCreate] = []
    for index, point in enumerate(combos):
        try:
            specs.append(ExperimentCreate.model_validate(_apply(base, point)))
        except ValidationError as exc:
            for error in exc.errors():
                located.add(index, point, tuple(error["loc"]), error["msg"])
    located.found.raise_if_any()

    found: dict[uuid.UUID, Dataset | None] = {}
    for index, (point, spec) in enumerate(zip(combos, specs, strict=True)):
        if spec.dataset_id not in found:
            found[spec.dataset_id] = _dataset(session, project_id, spec.dataset_id)
        dataset = found[spec.dataset_id]
        if dataset is None:
            located.add(index, point, ("dataset_id",), f"dataset {spec.dataset_id} does not exist")
            continue
        datasets.require_ready(dataset)
        try:
            experiments.validate_fields(session, project_id, spec, dataset)
        except FieldError as exc:
            for loc, message in exc.problems:
                located.add(index, point, tuple(loc[1:]) if loc[:1] == ("body",) else loc,
                            message)
    located.found.raise_if_any()

    # the queue last, for every run at once: it locks the project's row until the commit
    limits.check_queue(session, get_settings(), project_id, new_runs=len(specs))
    sweep = Sweep(project_id=project_id, name=request.name,
                  spec=request.model_dump(mode="json", exclude_none=True))
    made: list[Experiment] = []
    for point, spec in zip(combos, specs, strict=True):
        dataset = found[spec.dataset_id]
        assert dataset is not None
        experiment = experiments.build(project_id, spec, dataset)
        experiment.name = f"{request.name} [{_text(point)}]"[:200] if point else request.name
        experiment.sweep_point = point
        sweep.experiments.append(experiment)
        made.append(experiment)
    session.add(sweep)
    session.commit()
    experiments.publish(made)
    return sweep, [run for experiment in made for run in experiment.runs]


# --- reading -------------------------------------------------------------------------

def get(session: Session, project_id: uuid.UUID, sweep_id: uuid.UUID) -> Sweep:
    """The project's sweep with its experiments and runs; another project's is not
    found, like a missing one."""
    sweep = session.get(Sweep, sweep_id, options=[
        selectinload(Sweep.experiments).selectinload(Experiment.runs)])
    if sweep is None or sweep.project_id != project_id:
        raise NotFoundError("sweep", sweep_id)
    return sweep


def list_page(session: Session, project_id: uuid.UUID, limit: int,
              offset: int) -> tuple[list[Sweep], int]:
    mine = Sweep.project_id == project_id
    total = session.scalar(select(func.count()).select_from(Sweep).where(mine)) or 0
    rows = session.scalars(select(Sweep).where(mine)
                           .options(selectinload(Sweep.experiments)
                                    .selectinload(Experiment.runs))
                           .order_by(Sweep.created_at.desc(), Sweep.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), total


def runs_of(sweep: Sweep) -> list[tuple[Experiment, Run]]:
    return [(e, r) for e in sweep.experiments for r in e.runs]


def status(sweep: Sweep) -> dict[str, Any]:
    """Counts by status, finished / total, done."""
    runs = [r for _, r in runs_of(sweep)]
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    finished = sum(counts.get(s, 0) for s in TERMINAL)
    return {"total": len(runs), "counts": counts, "finished": finished,
            "progress": finished / len(runs) if runs else 1.0,
            "done": finished == len(runs)}


def order_of(metric: str) -> str:
    """desc for scores, asc for losses and calibration errors (also their
    ``_calibrated`` / ``_last`` variants)."""
    name = metric.removesuffix("_last").removesuffix("_calibrated")
    return "asc" if metric_mode(name) == "min" else "desc"


def summary(session: Session, project_id: uuid.UUID, sweep_id: uuid.UUID,
            metric: str) -> dict[str, Any]:
    """One row per configuration (the point without training.seed): n, mean, std,
    min, max of ``metric`` over its succeeded runs, and the best run; sorted by
    the mean, best first, configurations without a value last."""
    sweep = get(session, project_id, sweep_id)
    order = order_of(metric)
    groups: dict[str, dict[str, Any]] = {}
    for experiment, run in runs_of(sweep):
        config = {k: v for k, v in (experiment.sweep_point or {}).items() if k != SEED_PATH}
        group = groups.setdefault(json.dumps(config, sort_keys=True),
                                  {"config": config, "runs": 0, "values": []})
        group["runs"] += 1
        value = (run.metrics or {}).get(metric)
        if run.status == RunStatus.SUCCEEDED and value is not None:
            group["values"].append((float(value), run.id))
    rows = []
    for group in groups.values():
        values = [v for v, _ in group["values"]]
        pick = min if order == "asc" else max
        best = pick(group["values"], key=lambda pair: pair[0]) if values else None
        rows.append({"config": group["config"], "n": len(values), "runs": group["runs"],
                     "mean": statistics.fmean(values) if values else None,
                     "std": (statistics.stdev(values) if len(values) > 1 else 0.0)
                     if values else None,
                     "min": min(values) if values else None,
                     "max": max(values) if values else None,
                     "best_run_id": best[1] if best else None})
    sign = 1 if order == "asc" else -1
    rows.sort(key=lambda r: (r["mean"] is None, sign * (r["mean"] or 0.0)))
    return {"sweep_id": sweep.id, "metric": metric, "order": order, "rows": rows}


# --- changing ------------------------------------------------------------------------

def cancel(session: Session, project_id: uuid.UUID, sweep_id: uuid.UUID) -> Sweep:
    """Cancel every live run through the run cancel service (queued ones at once,
    running ones at their next step)."""
    sweep = get(session, project_id, sweep_id)
    live = [r.id for _, r in runs_of(sweep) if r.status in LIVE]
    for run_id in live:
        with contextlib.suppress(ConflictError):  # it finished meanwhile
            run_service.cancel(session, project_id, run_id)
    session.expire_all()
    return get(session, project_id, sweep_id)


def delete(session: Session, project_id: uuid.UUID, store: ArtifactStore,
           sweep_id: uuid.UUID) -> None:
    """Remove the sweep with its experiments (``experiments.delete``: runs cancelled
    first, then runs, metrics and checkpoints)."""
    sweep = get(session, project_id, sweep_id)
    for experiment_id in [e.id for e in sweep.experiments]:
        experiments.delete(session, project_id, store, experiment_id)
    session.expire_all()
    sweep = get(session, project_id, sweep_id)
    session.delete(sweep)
    session.commit()
