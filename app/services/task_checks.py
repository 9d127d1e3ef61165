"""Checks of the task-specific parts of an experiment against its dataset.

Classification and multilabel are checked by ``app.ml.tasks`` (does the label
shape fit?); retrieval pairs two modalities and mixes at the embedding level,
so it has rules of its own. The worker checks the same again (``app.ml.retrieval``).
"""

from typing import Any

from app.ml.retrieval import RETRIEVAL_METHODS
from app.schemas.experiments import ExperimentCreate
from app.services.errors import FieldErrorCollector

_RETRIEVAL_ONLY = "m3mix"


def check_task_fields(request: ExperimentCreate) -> None:
    """The fields that only make sense for one task."""
    found = FieldErrorCollector()
    retrieval = request.task == "retrieval"
    if request.task_weights and request.task != "multitask":
        found.add(("body", "task_weights"), f"applies to task multitask only, not {request.task}")
    if retrieval and request.retrieval is None:
        found.add(("body", "retrieval"), "required for task retrieval: "
                                         "{\"query\": ..., \"target\": ...}")
    if not retrieval and request.retrieval is not None:
        found.add(("body", "retrieval"), f"applies to task retrieval only, not {request.task}")
    method = request.augmentation.method
    if retrieval and method not in RETRIEVAL_METHODS:
        found.add(("body", "augmentation", "method"),
                  f"task retrieval mixes with {', '.join(RETRIEVAL_METHODS)}, not {method}")
    if not retrieval and method == _RETRIEVAL_ONLY:
        found.add(("body", "augmentation", "method"),
                  "m3mix mixes a retrieval model's embeddings; use it with task retrieval")
    found.raise_if_any()


def check_retrieval(request: ExperimentCreate, summary: dict[str, Any]) -> None:
    """Both modalities exist, differ and fit the mixing method; a batch has negatives."""
    assert request.retrieval is not None
    found = FieldErrorCollector()
    kinds = {m["name"]: m["kind"] for m in summary["modalities"]}
    have = ", ".join(f"{m} ({k})" for m, k in kinds.items())
    spec = request.retrieval
    for field, name in (("query", spec.query), ("target", spec.target)):
        if name not in kinds:
            found.add(("body", "retrieval", field),
                      f"the dataset has no modality {name!r}; it has {have}")
    if spec.query == spec.target:
        found.add(("body", "retrieval", "target"), "must differ from retrieval.query")
    elif spec.query in kinds and spec.target in kinds:
        pair = sorted((kinds[spec.query], kinds[spec.target]))
        if request.augmentation.method == "mixgen" and pair != ["image", "text"]:
            found.add(("body", "augmentation", "method"),
                      f"mixgen needs an image and a text modality as query and target, not "
                      f"{pair[0]} and {pair[1]}")
    if request.training.batch_size < 2:
        found.add(("body", "training", "batch_size"),
                  "retrieval needs at least 2 pairs per batch (the others are the negatives)")
    found.raise_if_any()
