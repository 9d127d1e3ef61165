"""What an autoencoder run learned: latent means of a split with a 2-D PCA
projection (JSON, or a PNG scatter coloured by class), reconstructions and
cross-modal generation (PNGs), from the run's checkpoint and the dataset it
trained on (``app.ml.representations`` computes and draws).

A run whose model has no latent answers 422 at ``path.run_id``, as prediction
does for a retrieval run: the request names a run that can never serve it
(409 is kept for a run that may still: one that has not succeeded yet).
"""

import uuid
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.orm import Session

from app.ml.models.latent import LatentModel
from app.ml.models.spec import LATENT_KINDS
from app.ml.representations import (
    latent_means,
    normalized,
    pca_2d,
    render_generation,
    render_reconstructions,
    render_scatter,
)
from app.services import datasets, predictions, runs
from app.services.errors import FieldError
from app.storage import ArtifactStore

RUN_LOC = ("path", "run_id")
MAX_EMBEDDINGS = 5000  # rows of one embeddings reply
MAX_PICTURES = 32  # samples of one reconstructions / generate PNG


@dataclass
class SplitView:
    """A split of the run's training dataset, normalised as the model reads it."""
    model: LatentModel
    kinds: dict[str, str]
    class_names: list[str]
    inputs: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    labels: list[int]
    positions: list[int]


def _open(session: Session, store: ArtifactStore, project_id: uuid.UUID, run_id: uuid.UUID,
          split: str, limit: int) -> SplitView:
    """The first ``limit`` rows of ``split`` and the run's model; 422 for a run
    without a latent, 409 until it succeeded (``predictions.load_run_model``)."""
    run = runs.get(session, project_id, run_id)
    kind = (run.experiment.spec.get("model") or {}).get("kind", "cnn")
    if kind not in LATENT_KINDS:
        raise FieldError(RUN_LOC, f"run {run.id} trained a {kind} model, which has no latent: "
                                  f"embeddings, reconstructions and generation apply to "
                                  f"{' and '.join(LATENT_KINDS)} runs")
    rm = predictions.load_run_model(session, store, project_id, run_id)
    model = rm.model.model
    assert isinstance(model, LatentModel) and rm.model.normalize is not None
    data = datasets.load_prepared(store, rm.training)
    rows = data.split_indices(split)[:limit]
    raw = {m: data.inputs[m][rows] for m in rm.model.modalities}
    present = {m: data.present[m][rows].bool() for m in rm.model.modalities
               if m in data.present}
    inputs, masks = normalized(raw, rm.model.normalize, present)
    labels = data.clean_labels[rows]
    if labels.dim() > 1:  # multi-label: the first class each sample has, for colouring
        labels = labels.float().argmax(dim=1)
    return SplitView(model, dict(rm.model.kinds or {}), list(rm.model.class_names), inputs,
                     masks, [int(v) for v in labels.tolist()], list(range(len(rows))))


def embeddings(session: Session, store: ArtifactStore, project_id: uuid.UUID,
               run_id: uuid.UUID, split: str, limit: int) -> dict[str, Any]:
    view = _open(session, store, project_id, run_id, split, limit)
    means = latent_means(view.model, view.inputs, view.present)
    coords, shares = pca_2d(means)
    return {"run_id": run_id, "split": split, "n": len(view.labels),
            "latent_dim": view.model.latent_dim, "class_names": view.class_names,
            "indices": view.positions, "labels": view.labels,
            "means": [[round(v, 6) for v in row] for row in means.tolist()],
            "pca": [[round(v, 6) for v in row] for row in coords.tolist()],
            "explained_variance": shares}


def embeddings_png(session: Session, store: ArtifactStore, project_id: uuid.UUID,
                   run_id: uuid.UUID, split: str, limit: int) -> bytes:
    view = _open(session, store, project_id, run_id, split, limit)
    coords, shares = pca_2d(latent_means(view.model, view.inputs, view.present))
    title = (f"latent means, {split} split (n={len(view.labels)}): PCA "
             f"{shares[0]:.0%} + {shares[1]:.0%} of the variance")
    return render_scatter(coords, view.labels, view.class_names, title)


def _captions(view: SplitView) -> list[str]:
    return [f"#{i} {view.class_names[c]}" for i, c in zip(view.positions, view.labels,
                                                         strict=True)]


def reconstructions_png(session: Session, store: ArtifactStore, project_id: uuid.UUID,
                        run_id: uuid.UUID, split: str, n: int) -> bytes:
    view = _open(session, store, project_id, run_id, split, n)
    return render_reconstructions(view.model, view.inputs, view.present, view.kinds,
                                  _captions(view))


def generate_png(session: Session, store: ArtifactStore, project_id: uuid.UUID,
                 run_id: uuid.UUID, split: str, n: int, source: str | None,
                 target: str | None) -> bytes:
    """``target`` decoded from ``source`` alone (defaults: the model's first and
    last modality); 422 at ``query.from`` / ``query.to`` for a modality it lacks."""
    view = _open(session, store, project_id, run_id, split, n)
    modalities = view.model.modalities
    source = source or modalities[0]
    target = target or modalities[-1]
    for field, name in (("from", source), ("to", target)):
        if name not in modalities:
            raise FieldError(("query", field), f"the run's model has no modality {name!r}; "
                                               f"it has {', '.join(modalities)}")
    return render_generation(view.model, view.inputs, source, target, view.kinds,
                             _captions(view))
