"""The training loop: tensor-resident data, batched mixing, no per-step host sync.

The prepared dataset stays as tensors (on the GPU when it fits); batches are
made by indexing; the running loss is a device tensor read once per epoch.
A ``cnn`` model trains on the image modality; a ``multimodal`` one on every
modality of the dataset, each normalised per batch with train statistics.
Everything the outside world sees goes through ``TrainHooks``, so the same loop
serves the worker (which writes to Postgres) and a notebook (which may print).

The task (``app.ml.tasks``) gives the loss on mixed targets and the metrics:
``classification`` or ``multilabel``. Missing modalities (the dataset's
presence masks) reach the multimodal model as masks; a missing sample's values
are zeroed after normalisation, so nothing stored for it leaks into a mixing
partner. Categorical tabular columns (``provenance["tabular"]``) get embeddings:
they are neither standardised nor interpolated as numbers — the encoder mixes
their embeddings. With ``calibration="temperature"`` a temperature fitted on
the last epoch's validation logits is reported and saved with the checkpoint.
"""

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from app.ml.calibration import fit_temperature
from app.ml.data.prepared import PreparedDataset
from app.ml.device import autocast_dtype, describe, resolve_device
from app.ml.mixing import Mixed, MixSpec, mix
from app.ml.models import ModelSpec, build_model
from app.ml.resume import ResumePoint
from app.ml.tasks import CLASSIFICATION, Task, get_task

# Keep at most this share of free GPU memory for the resident dataset.
_GPU_RESIDENT_SHARE = 0.5


CALIBRATIONS = ("none", "temperature")


@dataclass(frozen=True)
class TrainSpec:
    """``calibration``: ``temperature`` fits T on the validation split after the
    last epoch and reports ``temperature``, ``test_ece_calibrated`` and
    ``test_nll_calibrated`` next to the raw metrics (predictions do not change);
    ``none`` skips it."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024
    calibration: str = "temperature"

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, "
                             f"not {self.calibration!r}")


@dataclass(frozen=True)
class Progress:
    epoch: int
    step: int
    total_steps: int
    samples_per_s: float
    eta_s: float


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    device: str
    epochs_completed: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    # the test split's per-class scores (and confusion matrix / counts; completed runs)
    report: dict[str, object] | None = None


class TrainHooks:
    """Callbacks from the training loop; all default to doing nothing.

    They run on the training thread between steps, so they must be cheap:
    ``on_progress`` is called every step.
    """

    def on_start(self, device: str, total_steps: int) -> None: ...

    def on_progress(self, progress: Progress) -> None: ...

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None: ...

    # Hooks that set this get ``on_checkpoint(..., resume=ResumePoint)``: the
    # optimizer and generator states too, to carry the run on after a crash.
    wants_resume_points: bool = False

    def should_stop(self) -> bool:
        return False


def _data_device(tensors: list[torch.Tensor], device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    needed = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    return device if needed < free * _GPU_RESIDENT_SHARE else torch.device("cpu")


def _moments(train: torch.Tensor, dims: list[int], chunk_rows: int = 8192,
             rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ``dims`` (0 among them; kept for broadcasting), summed in
    float64 over chunks of rows, so no float copy of the whole split is made.
    ``rows`` (bool (N,)) limits them to those rows: the samples that have the
    modality, so a missing sample's zeros do not pull the statistics."""
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count = 0
    for start in range(0, train.shape[0], chunk_rows):
        part = train[start:start + chunk_rows]
        if rows is not None:
            part = part[rows[start:start + chunk_rows]]
        part = part.to(torch.float64)
        part_sum = part.sum(dim=dims, keepdim=True)
        part_sq = (part * part).sum(dim=dims, keepdim=True)
        total = part_sum if total is None else total + part_sum
        squares = part_sq if squares is None else squares + part_sq
        count += part.numel() // part_sum.numel()
    if total is None or squares is None or count <= 1:
        shape = [1 if d in dims else n for d, n in enumerate(train.shape)]
        return (torch.zeros(shape, device=train.device), torch.ones(shape, device=train.device))
    mean = total / count
    var = ((squares - count * mean * mean) / (count - 1)).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


class _Standardizer:
    """(x - mean) / std with train-split statistics over ``dims``, applied per batch
    so the resident copy keeps its compact dtype; video, audio and tabular data.
    ``keep`` lists feature columns (dim 1) left as they are: category codes."""

    def __init__(self, train: torch.Tensor, dims: list[int], device: torch.device,
                 rows: torch.Tensor | None = None, keep: list[int] | None = None) -> None:
        mean, std = _moments(train, dims, rows=rows)
        inv_std = 1.0 / std.clamp_min(1e-6)
        if keep:
            mean[:, keep], inv_std[:, keep] = 0.0, 1.0
        self.mean = mean.to(device)
        self.inv_std = inv_std.to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


class _Normalizer(_Standardizer):
    """Per-channel standardisation of (N, C, H, W) images (uint8 stays uint8 in
    memory; each batch is converted)."""

    def __init__(self, train_images: torch.Tensor, device: torch.device,
                 rows: torch.Tensor | None = None) -> None:
        super().__init__(train_images, [0, *range(2, train_images.dim())], device, rows)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _normalizer_for(kind: str, train: torch.Tensor, device: torch.device,
                    rows: torch.Tensor | None = None,
                    codes: list[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-batch normalisation of one modality from its train split (``rows``:
    the samples that have it; ``codes``: tabular columns holding category codes)."""
    if kind == "image":
        return _Normalizer(train, device, rows)
    if kind == "text" or not (train.is_floating_point() or kind == "video"):
        return _identity
    if kind == "video":  # (N, T, C, H, W): per channel
        return _Standardizer(train, [0, 1, *range(3, train.dim())], device, rows)
    if kind == "tabular":  # per feature
        return _Standardizer(train, [0], device, rows, keep=codes)
    return _Standardizer(train, list(range(train.dim())), device, rows)  # audio: one scale


Inputs = torch.Tensor | Mapping[str, torch.Tensor]
Normalize = Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable]


def _batch(inputs: Mapping[str, torch.Tensor], normalize: Mapping[str, Callable],
           idx: torch.Tensor | slice, device: torch.device,
           present: Mapping[str, torch.Tensor] | None = None,
           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Normalised modalities of rows ``idx`` and their presence masks; a missing
    sample's values become 0 (the train mean; padding for token ids), so what
    the dataset stores for it never reaches the model or a mixing partner."""
    batch, masks = {}, {}
    for m, x in inputs.items():
        value = normalize[m](x[idx].to(device, non_blocking=True))
        if present is not None and m in present:
            keep = present[m][idx].to(device, non_blocking=True)
            masks[m] = keep
            value = value * keep.view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
        batch[m] = value
    return batch, masks


def _with_own_codes(mixed: Mixed, batch: Mapping[str, torch.Tensor],
                    codes: Mapping[str, list[int]]) -> None:
    """Put each sample's own category codes back where ``mix`` interpolated them
    as numbers; the tabular encoder mixes their embeddings instead."""
    for m, columns in codes.items():
        if columns and m in mixed.ops:
            value = mixed.inputs[m].clone()
            for c in columns:  # plain column copies: no index tensor sent to the device
                value[:, c] = batch[m][:, c]
            mixed.inputs[m] = value


def _noisy(x: dict[str, torch.Tensor], noise: float, generator: torch.Generator | None,
           codes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Gaussian noise of std ``noise`` on the float inputs, category codes excepted."""
    out = {}
    for m, v in x.items():
        if not v.is_floating_point():
            out[m] = v
            continue
        eps = noise * torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype)
        for c in codes.get(m, ()):
            eps[:, c] = 0.0
        out[m] = v + eps
    return out


@torch.inference_mode()
def predict(model: torch.nn.Module, images: Inputs, normalize: Normalize,
            device: torch.device, batch_size: int, amp: torch.dtype | None, *,
            present: Mapping[str, torch.Tensor] | None = None, absent: tuple[str, ...] = (),
            noise: float = 0.0, generator: torch.Generator | None = None,
            codes: Mapping[str, list[int]] | None = None) -> torch.Tensor:
    """Float32 logits over a whole split, on ``device`` (no host sync).

    ``images`` is the image tensor (a ``cnn`` model) or a mapping of modality to
    tensor (a multimodal model, with ``normalize`` a mapping too). ``present``
    maps a modality to the split's (N,) presence mask; ``absent`` marks
    modalities missing for every sample; ``noise`` adds Gaussian noise of that
    standard deviation to the normalised float inputs (not to ``codes``, the
    category-code columns per modality).
    """
    model.eval()
    logits = []
    multimodal = isinstance(images, Mapping)
    total = next(iter(images.values())).shape[0] if multimodal else images.shape[0]
    for start in range(0, total, batch_size):
        rows = slice(start, start + batch_size)
        if multimodal:
            x, masks = _batch(images, normalize, rows, device, present)  # type: ignore[arg-type]
            if noise > 0:
                x = _noisy(x, noise, generator, codes or {})
            n = next(iter(x.values())).shape[0]
            masks.update({m: torch.zeros(n, dtype=torch.bool, device=device) for m in absent})
        else:
            x = normalize(images[rows].to(device, non_blocking=True))  # type: ignore[operator]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x, None, masks) if multimodal else model(x)
            logits.append(out.float())
    return torch.cat(logits)


def evaluate(model: torch.nn.Module, images: Inputs, labels: torch.Tensor,
             normalize: Normalize, device: torch.device, batch_size: int,
             amp: torch.dtype | None, *, task: str | Task = CLASSIFICATION,
             present: Mapping[str, torch.Tensor] | None = None, absent: tuple[str, ...] = (),
             noise: float = 0.0, generator: torch.Generator | None = None,
             codes: Mapping[str, list[int]] | None = None,
             report: list[str] | None = None) -> dict[str, Any]:
    """The task's metrics over a whole split, as device tensors (see ``predict``
    for the arguments). With ``report`` (the class names), the result also holds
    ``"report"``: the split's per-class scores (this one syncs with the host)."""
    task = get_task(task)
    logits = predict(model, images, normalize, device, batch_size, amp, present=present,
                     absent=absent, noise=noise, generator=generator, codes=codes)
    labels = labels.to(device)
    metrics: dict[str, Any] = task.metrics(logits, labels)
    if report is not None:
        metrics["report"] = task.report(logits, labels, report)
    return metrics


def _vocab_sizes(data: PreparedDataset, modalities: list[str]) -> dict[str, int]:
    vocab = data.provenance.get("vocab")
    sizes = {}
    for m in modalities:
        if data.modality_kinds.get(m) == "text":
            top = int(data.inputs[m].max()) + 1 if data.inputs[m].numel() else 1
            sizes[m] = max(top, len(vocab) if isinstance(vocab, list) else 0, 2)
    return sizes


def categorical_columns(data: PreparedDataset, modalities: list[str]) -> dict[str, dict[int, int]]:
    """Per tabular modality with category columns, {column: number of codes}.

    Read from ``provenance["tabular"][modality]`` as Parquet ingestion writes
    it: the numeric ``columns`` first, then one code column per entry of
    ``categorical`` (name → categories seen in train), coded 0 (missing or
    unseen) and 1 … len(categories).
    """
    meta = data.provenance.get("tabular")
    if not isinstance(meta, Mapping):
        return {}
    out: dict[str, dict[int, int]] = {}
    for m in modalities:
        info = meta.get(m)
        if data.modality_kinds.get(m) != "tabular" or not isinstance(info, Mapping):
            continue
        numeric = len(info.get("columns") or [])
        categories = list((info.get("categorical") or {}).values())
        width = int(data.inputs[m].shape[1])
        if numeric + len(categories) != width:
            raise ValueError(f"tabular modality {m!r} has {width} columns but its metadata "
                             f"lists {numeric} numeric and {len(categories)} categorical")
        if categories:
            out[m] = {numeric + j: len(values) + 1 for j, values in enumerate(categories)}
    return out


def _state_to_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # copy=True: on CPU .to() would hand out the live parameters, which the next
    # optimizer step overwrites under whoever holds the checkpoint.
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in model.state_dict().items()}


class _Split(NamedTuple):
    inputs: Inputs
    labels: torch.Tensor
    normalize: Normalize
    present: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """How many steps a run takes. A last batch of one is dropped: it cannot be
    mixed (and has no negatives for a contrastive loss) and breaks BatchNorm; a
    different sample each epoch, since the order is reshuffled."""
    steps_per_epoch: int
    samples_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, n_train: int, batch_size: int, epochs: int) -> "Schedule":
        steps = -(-n_train // batch_size)
        if n_train > 1 and n_train % batch_size == 1:
            steps -= 1
        return cls(steps, min(steps * batch_size, n_train), steps * epochs)


class ProgressClock:
    """Progress for the hooks: the rate within the epoch, and an ETA from the steps
    this call has trained (a resumed run does not count the earlier attempt's)."""

    def __init__(self, schedule: Schedule, batch_size: int, n_train: int,
                 first_step: int) -> None:
        self.schedule, self.batch_size, self.n_train = schedule, batch_size, n_train
        self.first_step = first_step
        self.started = self.epoch_started = time.perf_counter()

    def start_epoch(self) -> None:
        self.epoch_started = time.perf_counter()

    def progress(self, epoch: int, batch: int, step: int) -> Progress:
        now = time.perf_counter()
        elapsed = now - self.epoch_started
        done_in_epoch = min((batch + 1) * self.batch_size, self.n_train)
        rate = done_in_epoch / elapsed if elapsed > 0 else 0.0
        per_step = (now - self.started) / (step - self.first_step)
        return Progress(epoch, step, self.schedule.total_steps, rate,
                        per_step * (self.schedule.total_steps - step))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def emit_checkpoint(hooks: TrainHooks, epoch: int, step: int, model: torch.nn.Module,
                    metadata: dict[str, str], optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator], device: torch.device,
                    last_metrics: dict[str, float]) -> None:
    """The epoch's checkpoint, with a resume point for hooks that want one."""
    weights = _state_to_cpu(model)
    if hooks.wants_resume_points:
        point = _resume_point(epoch, step, weights, optimizer, generators, device,
                              last_metrics)
        hooks.on_checkpoint(epoch, weights, metadata, resume=point)  # type: ignore[call-arg]
    else:
        hooks.on_checkpoint(epoch, weights, metadata)


def train(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
          spec: TrainSpec, hooks: TrainHooks | None = None, *,
          task: str | Task = CLASSIFICATION, resume: ResumePoint | None = None) -> TrainResult:
    """Train a model for ``task`` on ``data`` with ``mix_spec`` mixing: on its
    image modality for a ``cnn`` model, on all its modalities for a
    ``multimodal`` one. Raises ``ValueError`` when the task does not fit the
    data's labels (``app.ml.tasks``).

    The global RNG (model init, dropout) is seeded from ``spec.seed`` inside a
    forked RNG state, so runs are reproducible and the caller's state is untouched.
    ``resume`` (a point saved by an earlier attempt of the same run) continues
    after its epoch with its weights, optimizer and random states, so the result
    is the one the uninterrupted run would have given on the same device.
    """
    task = get_task(task)
    task.check(data)
    device = resolve_device(spec.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        return _train(data, model_spec, mix_spec, spec, hooks or TrainHooks(), device, task,
                      resume)


def _modalities(data: PreparedDataset, multimodal: bool) -> list[str]:
    if multimodal:
        return list(data.inputs)
    if "image" not in data.inputs:
        raise ValueError("the cnn model needs an image modality")
    missing = int((~data.presence("image")).sum())
    if missing:
        raise ValueError(f"the cnn model needs every sample's image, but {missing} samples "
                         "have none; use a multimodal model, which handles missing modalities")
    return ["image"]


def _train(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec, spec: TrainSpec,
           hooks: TrainHooks, device: torch.device, task: Task,
           resume: ResumePoint | None) -> TrainResult:
    amp = autocast_dtype(device)
    multimodal = model_spec.kind == "multimodal"
    kinds = dict(data.modality_kinds)
    modalities = _modalities(data, multimodal)
    inputs_all, labels_all = {m: data.inputs[m] for m in modalities}, data.labels
    present_all = {m: data.present[m].bool() for m in modalities if m in data.present}
    categorical = categorical_columns(data, modalities) if multimodal else {}
    codes = {m: sorted(columns) for m, columns in categorical.items()}
    train_idx, val_idx, test_idx = (data.split_indices(s) for s in ("train", "val", "test"))

    home = _data_device([*inputs_all.values(), labels_all, *present_all.values()], device)
    inputs = {m: x.to(home) for m, x in inputs_all.items()}
    labels = labels_all.to(home)
    present = {m: p.to(home) for m, p in present_all.items()}
    train_rows = train_idx.to(home)
    train_inputs = {m: x[train_rows] for m, x in inputs.items()}
    train_labels = labels[train_rows]
    train_present = {m: p[train_rows] for m, p in present.items()}
    normalize = {m: _normalizer_for(kinds.get(m, m), x, device, train_present.get(m),
                                    codes.get(m))
                 for m, x in train_inputs.items()}
    n_train = train_labels.shape[0]
    plan = Schedule.of(n_train, spec.batch_size, spec.epochs)

    shapes = {m: tuple(x.shape[1:]) for m, x in inputs_all.items()}
    vocab_sizes = _vocab_sizes(data, modalities)
    if multimodal:
        model = build_model(model_spec, shapes, data.num_classes, kinds=kinds,
                            vocab_sizes=vocab_sizes, categorical=categorical,
                            multilabel=task.multilabel).to(device)
        shape_meta = {"input_shapes": json.dumps({m: list(s) for m, s in shapes.items()}),
                      "modality_kinds": json.dumps({m: kinds.get(m, m) for m in modalities}),
                      "vocab_sizes": json.dumps(vocab_sizes),
                      "categorical": json.dumps({m: {"columns": list(c),
                                                     "cardinalities": list(c.values())}
                                                 for m, c in categorical.items()})}
    else:
        model = build_model(model_spec, shapes["image"], data.num_classes).to(device)
        shape_meta = {"input_shape": json.dumps(list(shapes["image"]))}

    def forward(mixed: Mixed, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        if multimodal:
            return model(mixed.inputs, mixed, masks)
        return model(mixed.inputs["image"], mixed)

    def split(idx: torch.Tensor) -> _Split:
        rows = idx.to(home)
        masks = {m: p[rows] for m, p in present.items()}
        if multimodal:
            return _Split({m: x[rows] for m, x in inputs.items()}, labels[rows], normalize,
                          masks)
        return _Split(inputs["image"][rows], labels[rows], normalize["image"], masks)

    def logits_of(part: _Split) -> torch.Tensor:
        return predict(model, part.inputs, part.normalize, device, spec.eval_batch_size, amp,
                       present=part.present)

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    order_gen = torch.Generator(device=home).manual_seed(spec.seed)
    mix_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    # host-side draws (manifold mixup's layer) so the loop never waits for the GPU
    host_gen = torch.Generator().manual_seed(spec.seed + 2)
    task_mix, smoothing = task.mix_spec(mix_spec)
    # epochs without mixing (off_epoch) keep the label smoothing
    no_mix = MixSpec(method="none", label_smoothing=task_mix.label_smoothing)
    mix_kinds = {m: kinds.get(m, m) for m in modalities}

    generators = {"order": order_gen, "mix": mix_gen, "host": host_gen}
    step, epochs_done, last_metrics = 0, 0, dict[str, float]()
    if resume is not None:
        step, epochs_done, last_metrics = _restore(resume, model, optimizer, generators, device)

    val_split = split(val_idx)  # gathered once, evaluated every epoch
    val_labels = val_split.labels.to(device)
    device_name = describe(device)
    hooks.on_start(device_name, plan.total_steps)
    clock = ProgressClock(plan, spec.batch_size, n_train, first_step=step)
    temperature: float | None = None
    for epoch in range(epochs_done + 1, spec.epochs + 1):
        model.train()
        epoch_mix = task_mix if mix_spec.active_at(epoch, spec.epochs) else no_mix
        order = torch.randperm(n_train, generator=order_gen, device=home)
        loss_sum = torch.zeros((), device=device)
        clock.start_epoch()
        for b in range(plan.steps_per_epoch):
            if hooks.should_stop():
                return TrainResult("stopped", device_name, epochs_done, step, last_metrics)
            idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            batch, masks = _batch(train_inputs, normalize, idx, device, train_present)
            y = train_labels[idx].to(device, non_blocking=True)
            mixed = mix(batch, y, epoch_mix, mix_gen, data.num_classes,
                        kinds=mix_kinds, host_generator=host_gen)
            _with_own_codes(mixed, batch, codes)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = forward(mixed, masks)
            loss = task.loss(logits, task.targets(mixed.targets, smoothing))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.shape[0]
            step += 1
            hooks.on_progress(clock.progress(epoch, b, step))

        val_logits = logits_of(val_split)
        val = task.metrics(val_logits, val_labels)
        # the one host sync of the epoch
        last_metrics = {"train_loss": (loss_sum / plan.samples_per_epoch).item(),
                        **{f"val_{k}": v.item() for k, v in val.items()}}
        epochs_done = epoch
        hooks.on_epoch_end(epoch, step, last_metrics)
        meta = {"epoch": str(epoch), "step": str(step), "task": task.name,
                "model_spec": json.dumps(asdict(model_spec)), **shape_meta,
                "class_names": json.dumps(data.class_names)}
        if epoch == spec.epochs and spec.calibration == "temperature":
            # after the last epoch, so the final checkpoint carries it for inference
            temperature = fit_temperature(val_logits, val_labels, task.nll)
            meta["temperature"] = repr(temperature)
        emit_checkpoint(hooks, epoch, step, model, meta, optimizer, generators, device,
                        last_metrics)

    if temperature is None and spec.calibration == "temperature" and resume is not None:
        # resumed after the last epoch's checkpoint: fit it now
        temperature = fit_temperature(logits_of(val_split), val_labels, task.nll)
    test_split = split(test_idx)
    test_logits, test_labels = logits_of(test_split), test_split.labels.to(device)
    test = task.metrics(test_logits, test_labels)
    report = task.report(test_logits, test_labels, data.class_names)
    final = {**last_metrics, **{f"test_{k}": v.item() for k, v in test.items()}}
    if temperature is not None:
        calibrated = task.metrics(test_logits / temperature, test_labels)
        final.update(temperature=temperature, test_ece_calibrated=calibrated["ece"].item(),
                     test_nll_calibrated=calibrated["loss"].item())
    if multimodal:
        final.update(_robustness(model, test_split, modalities, device, spec, amp, task, codes))
    final["train_time_s"] = clock.elapsed()
    return TrainResult("completed", device_name, epochs_done, step, final, report)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _resume_point(epoch: int, step: int, weights: dict[str, torch.Tensor],
                  optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
                  device: torch.device, last_metrics: dict[str, float]) -> ResumePoint:
    # copies: the reporter thread writes them while the next epoch trains
    return ResumePoint(
        epoch=epoch, step=step, model=weights, optimizer=_to_cpu(optimizer.state_dict()),
        generators={k: g.get_state() for k, g in generators.items()},
        torch_rng=torch.get_rng_state(),
        cuda_rng=[torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        extra={"last_metrics": last_metrics})


def _restore(point: ResumePoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generators: dict[str, torch.Generator],
             device: torch.device) -> tuple[int, int, dict[str, float]]:
    """Load a resume point into the freshly built run; (step, epoch, metrics)."""
    model.load_state_dict(point.model)
    optimizer.load_state_dict(point.optimizer)  # moves the state to the params' device
    for name, generator in generators.items():
        generator.set_state(point.generators[name])
    torch.set_rng_state(point.torch_rng)
    if device.type == "cuda" and point.cuda_rng:
        torch.cuda.set_rng_state(point.cuda_rng[0], device)
    return point.step, point.epoch, dict(point.extra.get("last_metrics", {}))


def _robustness(model: torch.nn.Module, test: _Split, modalities: list[str],
                device: torch.device, spec: TrainSpec, amp: torch.dtype | None, task: Task,
                codes: Mapping[str, list[int]]) -> dict[str, float]:
    """The task's headline metric (accuracy; mAP for multi-label) on the test
    split with each modality missing for every sample (``test_<h>_without_<m>``)
    and with Gaussian noise of 0.1 train-std on the float inputs
    (``test_<h>_noise``); samples keep their own missing modalities throughout."""
    h = task.headline

    def headline(**kw: Any) -> torch.Tensor:
        return evaluate(model, test.inputs, test.labels, test.normalize, device,
                        spec.eval_batch_size, amp, task=task, present=test.present,
                        codes=codes, **kw)[h]

    out = {f"test_{h}_without_{m}": headline(absent=(m,)) for m in modalities}
    noise_gen = torch.Generator(device=device).manual_seed(spec.seed + 3)
    # inputs are standardised with train statistics, so 0.1 here is 0.1 · std
    out[f"test_{h}_noise"] = headline(noise=0.1, generator=noise_gen)
    return {k: v.item() for k, v in out.items()}
