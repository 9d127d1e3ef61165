"""Checks of a recipe against what a run will read, as (field, reason) pairs.

Pure functions of the spec and a dataset's summary facts, so the API refuses
a request with the same words the worker would fail it with (``services``
turn each pair into a 422 at ``body.training.<field>``).
"""

from collections.abc import Sequence

from app.ml.training.augment import augment_problem
from app.ml.training.spec import TrainSpec


def recipe_problems(spec: TrainSpec, metric_names: Sequence[str],
                    model_kinds: Sequence[str]) -> list[tuple[str, str]]:
    """What in ``spec`` cannot work for a task reporting ``metric_names`` (unprefixed)
    on a model reading modalities of ``model_kinds``."""
    problems = []
    problem = augment_problem(spec.augment, list(model_kinds))
    if problem:
        problems.append(("augment", problem))
    allowed = [f"val_{name}" for name in metric_names]
    followed = [("checkpoint_metric", spec.checkpoint_metric)]
    if spec.early_stopping is not None:
        followed.append(("early_stopping.metric", spec.early_stopping.metric))
    for field, metric in followed:
        if metric is not None and metric not in allowed:
            problems.append((field, f"{metric!r} is not a validation metric of this task; "
                                    f"choose one of {', '.join(allowed)}"))
    return problems
