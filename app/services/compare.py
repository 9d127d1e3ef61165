"""Runs side by side: final metrics, specs, the spec fields that differ, and
metric curves aligned by step."""

import uuid
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Run
from app.services import runs as run_service
from app.services.errors import FieldError

MIN_RUNS, MAX_RUNS = 2, 20
DEFAULT_KEYS = ("val_acc", "train_loss")


def parse_ids(text: str) -> list[uuid.UUID]:
    """``a,b,…`` → run ids (in order, repeats dropped); 422 at ``ids`` otherwise."""
    ids: list[uuid.UUID] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            run_id = uuid.UUID(part)
        except ValueError:
            raise FieldError(("query", "ids"), f"{part!r} is not a run id") from None
        if run_id not in ids:
            ids.append(run_id)
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        raise FieldError(("query", "ids"), f"give {MIN_RUNS} to {MAX_RUNS} distinct run ids, "
                                           f"comma-separated (got {len(ids)})")
    return ids


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def spec_of(run: Run) -> dict[str, Any]:
    experiment = run.experiment
    return {"dataset_id": str(experiment.dataset_id), "task": experiment.task,
            **experiment.spec}


def differs(specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Dotted field → run id → value, for the fields whose values are not all equal
    (a field a run lacks counts as null)."""
    flat = {run_id: flatten(spec) for run_id, spec in specs.items()}
    fields = sorted({f for spec in flat.values() for f in spec})
    out: dict[str, dict[str, Any]] = {}
    for field in fields:
        values = {run_id: spec.get(field) for run_id, spec in flat.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[field] = values
    return out


def compare(session: Session, project_id: uuid.UUID, run_ids: list[uuid.UUID],
            keys: list[str], max_points: int | None = None) -> dict[str, Any]:
    runs = [run_service.get(session, project_id, run_id) for run_id in run_ids]  # 404s
    specs = {str(run.id): spec_of(run) for run in runs}
    histories: dict[str, dict[str, Any]] = {}
    curves = {str(run.id): run_service.columns_of(session, run.id, keys=keys,
                                                  max_points=max_points)
              for run in runs}
    for key in keys:
        empty: dict[str, list[Any]] = {"step": [], "value": []}
        by_run = {run_id: dict(zip(history.get(key, empty)["step"],
                                   history.get(key, empty)["value"], strict=True))
                  for run_id, history in curves.items()}
        steps = sorted({step for points in by_run.values() for step in points})
        histories[key] = {"steps": steps,
                          "runs": {run_id: [points.get(step) for step in steps]
                                   for run_id, points in by_run.items()}}
    return {"runs": [{"id": run.id, "experiment_id": run.experiment_id,
                      "name": run.experiment.name, "status": run.status,
                      "metrics": run.metrics or {}, "spec": specs[str(run.id)]}
                     for run in runs],
            "differs": differs(specs), "histories": histories}
