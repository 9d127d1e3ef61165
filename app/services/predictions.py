"""Predictions of a succeeded run's model on rows of a dataset split or on a file.

The model is rebuilt from the run's checkpoint alone (``app.ml.checkpoint``):
weights, the train-split normalisation and the calibration temperature. Its
logits come from the same ``predict`` the run's test evaluation used, and the
accuracy is computed as the run's metrics compute it (argmax of the softmax;
multi-label: every class right at logit >= 0), so over a whole test split it
is the run's ``test_acc`` (``test_subset_acc``) — bit for bit for a run trained
on CPU; a GPU run was evaluated in mixed precision and can differ in near-ties.

A file is read with the dataset readers in their prediction mode (the upload
checks and caps; labels optional — per task for a multitask run), and a
Parquet / archive file is encoded as
the run's training dataset was (vocabulary, tabular statistics, categories:
``app.ml.data.samples``). Nothing is cached across requests beyond the
prepared datasets ``services.datasets`` already keeps.
"""

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from sqlalchemy.orm import Session

from app.db.models import Dataset
from app.ml.checkpoint import LoadedModel, load_checkpoint
from app.ml.data.ingest_spec import IngestSpec
from app.ml.data.samples import (
    Encoding,
    Label,
    Samples,
    apply_encoding,
    fit_spec,
    spec_from_provenance,
)
from app.ml.multitask import NAME as MULTITASK
from app.ml.safetensors_meta import header_metadata
from app.ml.tasks import TASKS
from app.runs.status import LIVE, RunStatus
from app.schemas.predictions import (
    MAX_PREDICT_SAMPLES,
    Prediction,
    PredictionsOut,
    PredictRequest,
    TaskPrediction,
)
from app.services import datasets, ingest, runs
from app.services.errors import ConflictError, FieldError
from app.settings import Settings
from app.storage import ArtifactStore

Loc = tuple[str | int, ...]
DATASET_LOC: Loc = ("body", "dataset_id")
FILE_LOC: Loc = ("body", "file")


@dataclass
class RunModel:
    """What predicting needs of a run: its model and the dataset it trained on."""
    run_id: uuid.UUID
    model: LoadedModel
    vocab_sizes: dict[str, int]
    training: Dataset


def load_run_model(session: Session, store: ArtifactStore, project_id: uuid.UUID,
                   run_id: uuid.UUID) -> RunModel:
    """The run's final model; 404 for another project's run, 422 for a task that
    has no class predictions, 409 until the run succeeded or for a checkpoint
    without stored normalisation."""
    run = runs.get(session, project_id, run_id)
    task = run.experiment.task
    if task not in TASKS and task != MULTITASK:
        raise FieldError(("path", "run_id"), f"run {run.id} is a {task} run: prediction "
                         "applies to classification, multilabel and multitask runs, whose "
                         "models output classes")
    if run.status != RunStatus.SUCCEEDED:
        hint = (f"wait until it has finished (GET /v1/runs/{run.id})"
                if run.status in LIVE else "it left no final model")
        raise ConflictError(f"run {run.id} is {run.status}: only a succeeded run's model "
                            f"predicts; {hint}")
    if not run.checkpoint_key:
        raise ConflictError(f"run {run.id} has no checkpoint to predict with")
    blob = store.get(run.checkpoint_key)
    model = load_checkpoint(blob)
    if model.normalize is None:
        raise ConflictError(f"run {run.id}'s checkpoint predates stored input normalisation, "
                            "so its inputs cannot be prepared as in training; train the "
                            "experiment again (or download the checkpoint and normalise "
                            "inputs yourself)")
    vocab = json.loads(header_metadata(blob).get("vocab_sizes", "{}"))
    return RunModel(run.id, model, {m: int(v) for m, v in vocab.items()},
                    run.experiment.dataset)


def predict_split(session: Session, store: ArtifactStore, project_id: uuid.UUID,
                  run_id: uuid.UUID, request: PredictRequest) -> PredictionsOut:
    """Rows of a ready dataset's split (all, or ``request.indices`` of it)."""
    rm = load_run_model(session, store, project_id, run_id)
    data = datasets.load_prepared(store, datasets.get(session, project_id, request.dataset_id))
    rows = data.split_indices(request.split)
    if request.indices is None:
        if len(rows) > MAX_PREDICT_SAMPLES:
            raise FieldError(("body", "indices"), f"the {request.split} split has {len(rows)} "
                             f"rows, more than the {MAX_PREDICT_SAMPLES} one request predicts; "
                             "send indices (positions in the split), a batch at a time")
        positions = list(range(len(rows)))
    else:
        positions = list(request.indices)
        for i, p in enumerate(positions):
            if p >= len(rows):
                raise FieldError(("body", "indices", i), f"{p} is outside the "
                                 f"{request.split} split, whose rows are 0..{len(rows) - 1}")
    model = rm.model
    problem = model.task.mismatch(data.multilabel)
    if problem is not None:
        raise FieldError(DATASET_LOC, f"the run's model: {problem}")
    _check_shapes(model, {m: tuple(x.shape[1:]) for m, x in data.inputs.items()}, DATASET_LOC)
    chosen = rows[torch.tensor(positions, dtype=torch.long)]
    inputs = {m: data.inputs[m][chosen] for m in model.modalities}
    _check_token_ids(rm, inputs, DATASET_LOC)
    present = {m: data.present[m][chosen] for m in model.modalities if m in data.present}
    logits = model.logits(inputs, present or None)
    if model.heads is not None:
        labels_by_task = {task: [names[k] for k in data.labels_of(task)[chosen].tolist()]
                          for task, names in data.tasks.items()}
        return _reply_tasks(rm, logits, positions, labels_by_task)
    clean = data.clean_labels[chosen]
    if data.multilabel:
        labels: list[Label] = [[data.class_names[k] for k in torch.nonzero(row).flatten()
                                .tolist()] for row in clean]
    else:
        labels = [data.class_names[c] for c in clean.tolist()]
    return _reply(rm, logits, positions, labels, DATASET_LOC)


def predict_file(session: Session, store: ArtifactStore, settings: Settings,
                 project_id: uuid.UUID, run_id: uuid.UUID, path: Path, filename: str,
                 spec: IngestSpec | None) -> PredictionsOut:
    """The samples of an uploaded file, in any upload format (by its name), read
    as an upload is; problems with the file are 422s under ``body.file``."""
    rm = load_run_model(session, store, project_id, run_id)
    model = rm.model
    fmt = ingest.upload_format(filename)
    encoding = None
    if fmt != "npz":  # words and categories are coded as in the run's training data
        training = datasets.load_prepared(store, rm.training)
        encoding = Encoding.of(training.class_names, training.provenance)
        if spec is None:
            spec = spec_from_provenance(training.provenance, rm.training.source.get("spec"))
    fit = partial(fit_spec, shapes=model.input_shapes or {}, multilabel=model.task.multilabel,
                  max_vocab=ingest.limits(settings).max_vocab)
    samples: Samples = ingest.read_samples(settings, path, fmt, spec, fit, MAX_PREDICT_SAMPLES,
                                           filename)
    if encoding is not None:
        samples = apply_encoding(samples, encoding)
    _check_shapes(model, {m: tuple(x.shape[1:]) for m, x in samples.inputs.items()}, FILE_LOC)
    inputs = {m: samples.inputs[m] for m in model.modalities}
    _check_token_ids(rm, inputs, FILE_LOC)
    logits = model.logits(inputs)
    if model.heads is not None:
        return _reply_tasks(rm, logits, list(range(samples.num_samples)),
                            _file_task_labels(rm, samples))
    return _reply(rm, logits, list(range(samples.num_samples)), samples.labels,
                  (*FILE_LOC, "label"))


def _file_task_labels(rm: RunModel, samples: Samples) -> dict[str, list[Label]]:
    """A file's labels for a multitask model: per task (``label.<task>`` arrays,
    or the tasks' columns of a table), each a class of the model's task."""
    heads = rm.model.heads
    assert heads is not None
    if samples.task_labels is None:
        if samples.labels is not None:
            raise FieldError((*FILE_LOC, "label"), "a multitask run's labels are per task: "
                             "label.<task> arrays in an .npz, or the spec's tasks columns in "
                             "a table; send those, or no labels")
        return {}
    classes = {h.name: h.classes for h in heads.heads}
    for task, labels in samples.task_labels.items():
        loc = (*FILE_LOC, f"label.{task}")
        if task not in classes:
            raise FieldError(loc, f"the run's model has no task {task} (its tasks: "
                                  f"{', '.join(classes)})")
        for i, label in enumerate(labels):
            if label is not None and label not in classes[task]:
                raise FieldError(loc, f"sample {i}: class {label!r} is not one of task "
                                      f"{task}'s classes ({', '.join(classes[task])})")
    return samples.task_labels


def _check_shapes(model: LoadedModel, shapes: dict[str, tuple[int, ...]], loc: Loc) -> None:
    problems = model.mismatches(shapes)
    if problems:
        where = (*loc, problems[0][0]) if loc == FILE_LOC else loc
        raise FieldError(where, "inputs do not fit the run's model: "
                         + "; ".join(f"{m}: {why}" for m, why in problems))


def _check_token_ids(rm: RunModel, inputs: dict[str, torch.Tensor], loc: Loc) -> None:
    """Token ids the model has no embedding for would fail inside it: say so here."""
    for m, size in rm.vocab_sizes.items():
        x = inputs.get(m)
        if x is not None and x.numel() and int(x.max()) >= size:
            where = (*loc, m) if loc == FILE_LOC else loc
            raise FieldError(where, f"{m}: token id {int(x.max())} is outside the model's "
                                    f"vocabulary of {size} ids")


def _targets(labels: list[Label], class_names: list[str], multilabel: bool,
             loc: Loc) -> tuple[list[int], torch.Tensor]:
    """The rows that have a label, and those labels as the run's metrics take them:
    class indices (N,), or multi-hot rows (N, K)."""
    position = {name: i for i, name in enumerate(class_names)}
    rows, targets = [], []
    for i, label in enumerate(labels):
        if label is None:
            continue
        if isinstance(label, list) and not multilabel:
            raise FieldError(loc, f"sample {i} has a set of classes (multi-label), but the "
                                  "run's model predicts one class per sample")
        names = [label] if isinstance(label, str) else label
        unknown = [n for n in names if n not in position]
        if unknown:
            known = ", ".join(class_names[:20]) + (", …" if len(class_names) > 20 else "")
            raise FieldError(loc, f"sample {i}: class {unknown[0]!r} is not one of the "
                                  f"model's classes ({known})")
        rows.append(i)
        if multilabel:
            hot = torch.zeros(len(class_names), dtype=torch.uint8)
            hot[[position[n] for n in names]] = 1
            targets.append(hot)
        else:
            targets.append(torch.tensor(position[names[0]]))
    if not targets:
        return rows, torch.zeros(0, dtype=torch.long)
    return rows, torch.stack(targets)


def _reply(rm: RunModel, logits: torch.Tensor, indices: list[int],
           labels: list[Label] | None, label_loc: Loc) -> PredictionsOut:
    model = rm.model
    names, multilabel = model.class_names, model.task.multilabel
    probabilities = model.probabilities(logits).tolist()
    if multilabel:  # p >= 0.5 at any temperature: logit >= 0, as the metrics decide
        chosen = (logits >= 0).tolist()
        predicted: list[str | list[str]] = [[n for n, on in zip(names, row, strict=True)
                                             if on] for row in chosen]
    else:  # the metrics' argmax (of the uncalibrated softmax)
        top = logits.float().softmax(dim=-1).argmax(dim=-1)
        predicted = [names[k] for k in top.tolist()]
    rows, targets = _targets(labels or [], names, multilabel, label_loc)
    accuracy = None
    if rows:
        picked = torch.tensor(rows, dtype=torch.long)
        if multilabel:
            right = ((logits[picked] >= 0) == (targets > 0)).all(dim=-1)
        else:
            right = top[picked] == targets
        accuracy = right.float().mean().item()
    return PredictionsOut(
        run_id=rm.run_id, task="multilabel" if multilabel else "classification",
        n=len(indices), n_labelled=len(rows), accuracy=accuracy,
        predictions=[Prediction(index=index, predicted=predicted[i],
                                probabilities=dict(zip(names, probabilities[i], strict=True)),
                                label=labels[i] if labels else None)
                     for i, index in enumerate(indices)])


def _reply_tasks(rm: RunModel, logits: torch.Tensor, indices: list[int],
                 labels_by_task: Mapping[str, Sequence[Label]]) -> PredictionsOut:
    """A multitask model's reply: each task's block of the logits read as a
    classifier's (argmax of its softmax; calibrated probabilities), labels matched
    by class name, so a dataset whose tasks list their classes otherwise still
    compares; a task's accuracy counts the rows labelled for it, and the accuracy
    is the tasks' unweighted mean, as the run's test_acc."""
    heads = rm.model.heads
    assert heads is not None
    probabilities = rm.model.probabilities(logits)
    per_task: dict[str, list[TaskPrediction]] = {}
    task_accuracy: dict[str, float] = {}
    for head, block in zip(heads.heads, heads.blocks(), strict=True):
        names = list(head.classes)
        top = logits[:, block].float().softmax(dim=-1).argmax(dim=-1).tolist()
        labels = labels_by_task.get(head.name) or [None] * len(top)
        per_task[head.name] = [
            TaskPrediction(predicted=names[k],
                           probabilities=dict(zip(names, p, strict=True)),
                           label=labels[i])  # a task's label is one class
            for i, (k, p) in enumerate(zip(top, probabilities[:, block].tolist(), strict=True))]
        given = [(k, y) for k, y in zip(top, labels, strict=True) if y is not None]
        if given:
            task_accuracy[head.name] = sum(names[k] == y for k, y in given) / len(given)
    first = heads.heads[0].name
    labelled = sum(any(p[i].label is not None for p in per_task.values())
                   for i in range(len(indices)))
    return PredictionsOut(
        run_id=rm.run_id, task="multitask", n=len(indices), n_labelled=labelled,
        accuracy=(sum(task_accuracy.values()) / len(task_accuracy)) if task_accuracy else None,
        task_accuracy=task_accuracy or None,
        predictions=[Prediction(index=index, predicted=per_task[first][i].predicted,
                                probabilities=per_task[first][i].probabilities,
                                label=per_task[first][i].label,
                                tasks={t: preds[i] for t, preds in per_task.items()})
                     for i, index in enumerate(indices)])
