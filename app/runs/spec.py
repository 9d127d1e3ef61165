"""A run's stored spec, parsed once for training: ``RunPlan``.

The claim parses it before it commits (``app.runs.service.claim``): a spec
that no longer parses (written by another version, edited by hand) fails the
run at once with the reason, instead of leaving it ``running`` for the reaper.
"""

import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from app.ml.mixing.types import MixSpec
from app.ml.models.spec import ModelSpec
from app.ml.training.spec import TrainSpec
from app.schemas.experiments import ExperimentCreate, ModelSpecIn


class SpecError(ValueError):
    """The stored spec does not give a trainable plan; the message says why."""


@dataclass(frozen=True)
class RunPlan:
    """What the worker trains: the ML layer's specs, and where the weights start."""

    task: str
    model: ModelSpec
    mixing: MixSpec
    training: TrainSpec
    # model.weights / model.init_from_run, resolved by the worker (app.services.initial_weights)
    start: ModelSpecIn
    retrieval_query: str | None = None
    retrieval_target: str | None = None
    m3mix_weight: float = 1.0
    time_limit_s: float | None = None
    task_weights: dict[str, float] | None = None  # task multitask: each task's loss weight
    # the stored fields it was parsed from (JSON), for processes that parse it again:
    # the other ranks of a data-parallel run
    source: dict[str, Any] | None = field(default=None, compare=False)


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}"
                     for e in exc.errors())


def parse(name: str, dataset_id: uuid.UUID, task: str, spec: dict[str, Any]) -> RunPlan:
    """The plan of an experiment's stored fields; SpecError naming the fields."""
    try:
        request = ExperimentCreate.model_validate(
            {"name": name, "dataset_id": dataset_id, "task": task, **spec})
        retrieval = request.retrieval
        if request.task == "retrieval" and retrieval is None:
            raise SpecError("retrieval: required for task retrieval")
        return RunPlan(task=request.task, model=request.model.to_ml(),
                       mixing=request.augmentation.to_mix_spec(),
                       training=request.training.to_ml(), start=request.model,
                       retrieval_query=retrieval.query if retrieval else None,
                       retrieval_target=retrieval.target if retrieval else None,
                       m3mix_weight=retrieval.m3mix_weight if retrieval else 1.0,
                       time_limit_s=request.training.time_limit_s,
                       task_weights=request.task_weights,
                       source={"name": name, "dataset_id": str(dataset_id), "task": task,
                               "spec": spec})
    except ValidationError as exc:
        raise SpecError(f"the stored spec does not parse: {_problems(exc)}") from None
    except SpecError:
        raise
    except ValueError as exc:  # the ML layer's own checks (ModelSpecError, MixSpec, ...)
        raise SpecError(f"the stored spec does not parse: {exc}") from None
