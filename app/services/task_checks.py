"""Checks of the task-specific parts of an experiment against its dataset.

Classification and multilabel are checked by ``app.ml.tasks`` (does the label
shape fit?); retrieval pairs two modalities and mixes at the embedding level,
so it has rules of its own. The worker checks the same again (``app.ml.retrieval``).
"""

from typing import Any

from app.ml.retrieval import RETRIEVAL_METHODS
from app.schemas.experiments import ExperimentCreate
from app.services.errors import FieldError

_RETRIEVAL_ONLY = "m3mix"


def check_task_fields(request: ExperimentCreate) -> None:
    """The fields that only make sense for one task."""
    retrieval = request.task == "retrieval"
    if retrieval and request.retrieval is None:
        raise FieldError(("body", "retrieval"), "required for task retrieval: "
                                                "{\"query\": ..., \"target\": ...}")
    if not retrieval and request.retrieval is not None:
        raise FieldError(("body", "retrieval"), f"applies to task retrieval only, not "
                                                f"{request.task}")
    method = request.augmentation.method
    if retrieval and method not in RETRIEVAL_METHODS:
        raise FieldError(("body", "augmentation", "method"),
                         f"task retrieval mixes with {', '.join(RETRIEVAL_METHODS)}, not "
                         f"{method}")
    if not retrieval and method == _RETRIEVAL_ONLY:
        raise FieldError(("body", "augmentation", "method"),
                         "m3mix mixes a retrieval model's embeddings; use it with task "
                         "retrieval")


def check_retrieval(request: ExperimentCreate, summary: dict[str, Any]) -> None:
    """Both modalities exist, differ and fit the mixing method; a batch has negatives."""
    assert request.retrieval is not None
    kinds = {m["name"]: m["kind"] for m in summary["modalities"]}
    have = ", ".join(f"{m} ({k})" for m, k in kinds.items())
    spec = request.retrieval
    for field, name in (("query", spec.query), ("target", spec.target)):
        if name not in kinds:
            raise FieldError(("body", "retrieval", field),
                             f"the dataset has no modality {name!r}; it has {have}")
    if spec.query == spec.target:
        raise FieldError(("body", "retrieval", "target"), "must differ from retrieval.query")
    pair = sorted((kinds[spec.query], kinds[spec.target]))
    if request.augmentation.method == "mixgen" and pair != ["image", "text"]:
        raise FieldError(("body", "augmentation", "method"),
                         f"mixgen needs an image and a text modality as query and target, "
                         f"not {pair[0]} and {pair[1]}")
    if request.training.batch_size < 2:
        raise FieldError(("body", "training", "batch_size"),
                         "retrieval needs at least 2 pairs per batch (the others are the "
                         "negatives)")
