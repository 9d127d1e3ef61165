"""The training loop: tensor-resident data, batched mixing, no per-step host sync.

The prepared dataset stays as tensors (on the GPU when it fits); batches are
made by indexing; the running loss is a device tensor read once per epoch.
A ``cnn`` model trains on the image modality; a ``multimodal`` one on every
modality of the dataset, each normalised per batch with train statistics.
Everything the outside world sees goes through ``TrainHooks``, so the same loop
serves the worker (which writes to Postgres) and a notebook (which may print).
"""

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.device import autocast_dtype, describe, resolve_device
from app.ml.metrics import classification_metrics, evaluation_report, soft_cross_entropy
from app.ml.mixing import Mixed, MixSpec, mix
from app.ml.models import ModelSpec, build_model

# Keep at most this share of free GPU memory for the resident dataset.
_GPU_RESIDENT_SHARE = 0.5


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024


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
    # the test split's confusion matrix and per-class scores (completed runs)
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

    def should_stop(self) -> bool:
        return False


def _data_device(tensors: list[torch.Tensor], device: torch.device) -> torch.device:
    if device.type != "cuda":
        return device
    needed = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    return device if needed < free * _GPU_RESIDENT_SHARE else torch.device("cpu")


def _moments(train: torch.Tensor, dims: list[int],
             chunk_rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ``dims`` (0 among them; kept for broadcasting), summed in
    float64 over chunks of rows, so no float copy of the whole split is made."""
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count = 0
    for start in range(0, train.shape[0], chunk_rows):
        part = train[start:start + chunk_rows].to(torch.float64)
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
    so the resident copy keeps its compact dtype; video, audio and tabular data."""

    def __init__(self, train: torch.Tensor, dims: list[int], device: torch.device) -> None:
        mean, std = _moments(train, dims)
        self.mean = mean.to(device)
        self.inv_std = (1.0 / std.clamp_min(1e-6)).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


class _Normalizer(_Standardizer):
    """Per-channel standardisation of (N, C, H, W) images (uint8 stays uint8 in
    memory; each batch is converted)."""

    def __init__(self, train_images: torch.Tensor, device: torch.device) -> None:
        super().__init__(train_images, [0, *range(2, train_images.dim())], device)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _normalizer_for(kind: str, train: torch.Tensor,
                    device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "image":
        return _Normalizer(train, device)
    if kind == "text" or not (train.is_floating_point() or kind == "video"):
        return _identity
    if kind == "video":  # (N, T, C, H, W): per channel
        return _Standardizer(train, [0, 1, *range(3, train.dim())], device)
    if kind == "tabular":  # per feature
        return _Standardizer(train, [0], device)
    return _Standardizer(train, list(range(train.dim())), device)  # audio: one scale


Inputs = torch.Tensor | Mapping[str, torch.Tensor]
Normalize = Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable]


def _batch(inputs: Mapping[str, torch.Tensor], normalize: Mapping[str, Callable],
           idx: torch.Tensor | slice, device: torch.device) -> dict[str, torch.Tensor]:
    return {m: normalize[m](x[idx].to(device, non_blocking=True)) for m, x in inputs.items()}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: Inputs, labels: torch.Tensor,
             normalize: Normalize, device: torch.device, batch_size: int,
             amp: torch.dtype | None, *, absent: tuple[str, ...] = (),
             noise: float = 0.0, generator: torch.Generator | None = None,
             report: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Metrics over a whole split, as device tensors.

    ``images`` is the image tensor (a ``cnn`` model) or a mapping of modality to
    tensor (a multimodal model, with ``normalize`` a mapping too). ``absent``
    marks modalities missing for every sample; ``noise`` adds Gaussian noise of
    that standard deviation to the normalised float inputs. With ``report``
    (the class names), the result also holds ``"report"``: the split's confusion
    matrix and per-class scores (this one syncs with the host).
    """
    model.eval()
    logits = []
    multimodal = isinstance(images, Mapping)
    total = next(iter(images.values())).shape[0] if multimodal else images.shape[0]
    for start in range(0, total, batch_size):
        rows = slice(start, start + batch_size)
        if multimodal:
            x: Inputs = _batch(images, normalize, rows, device)  # type: ignore[arg-type]
            if noise > 0:
                x = {m: v + noise * torch.randn(v.shape, generator=generator, device=v.device,
                                                dtype=v.dtype) if v.is_floating_point() else v
                     for m, v in x.items()}
            n = next(iter(x.values())).shape[0]
            present = {m: torch.zeros(n, dtype=torch.bool, device=device) for m in absent}
        else:
            x = normalize(images[rows].to(device, non_blocking=True))  # type: ignore[operator]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x, None, present) if multimodal else model(x)
            logits.append(out.float())
    all_logits, labels = torch.cat(logits), labels.to(device)
    metrics: dict[str, Any] = classification_metrics(all_logits, labels)
    if report is not None:
        metrics["report"] = evaluation_report(all_logits, labels, report)
    return metrics


def _vocab_sizes(data: PreparedDataset, modalities: list[str]) -> dict[str, int]:
    vocab = data.provenance.get("vocab")
    sizes = {}
    for m in modalities:
        if data.modality_kinds.get(m) == "text":
            top = int(data.inputs[m].max()) + 1 if data.inputs[m].numel() else 1
            sizes[m] = max(top, len(vocab) if isinstance(vocab, list) else 0, 2)
    return sizes


def _state_to_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # copy=True: on CPU .to() would hand out the live parameters, which the next
    # optimizer step overwrites under whoever holds the checkpoint.
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in model.state_dict().items()}


def train(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
          spec: TrainSpec, hooks: TrainHooks | None = None) -> TrainResult:
    """Train a classifier on ``data`` with ``mix_spec`` mixing: on its image
    modality for a ``cnn`` model, on all its modalities for a ``multimodal`` one.

    The global RNG (model init, dropout) is seeded from ``spec.seed`` inside a
    forked RNG state, so runs are reproducible and the caller's state is untouched.
    """
    device = resolve_device(spec.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        return _train(data, model_spec, mix_spec, spec, hooks or TrainHooks(), device)


def _train(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec, spec: TrainSpec,
           hooks: TrainHooks, device: torch.device) -> TrainResult:
    amp = autocast_dtype(device)
    multimodal = model_spec.kind == "multimodal"
    kinds = dict(data.modality_kinds)
    modalities = list(data.inputs) if multimodal else ["image"]
    if not multimodal and "image" not in data.inputs:
        raise ValueError("the cnn model needs an image modality")
    inputs_all, labels_all = {m: data.inputs[m] for m in modalities}, data.labels
    train_idx, val_idx, test_idx = (data.split_indices(s) for s in ("train", "val", "test"))

    home = _data_device([*inputs_all.values(), labels_all], device)
    inputs = {m: x.to(home) for m, x in inputs_all.items()}
    labels = labels_all.to(home)
    train_inputs = {m: x[train_idx.to(home)] for m, x in inputs.items()}
    train_labels = labels[train_idx.to(home)]
    normalize = {m: _normalizer_for(kinds.get(m, m), x, device)
                 for m, x in train_inputs.items()}
    n_train = train_labels.shape[0]
    steps_per_epoch = -(-n_train // spec.batch_size)
    if n_train > 1 and n_train % spec.batch_size == 1:
        # a last batch of one cannot be mixed and breaks BatchNorm; it is dropped
        # (a different sample each epoch, since the order is reshuffled)
        steps_per_epoch -= 1
    samples_per_epoch = min(steps_per_epoch * spec.batch_size, n_train)
    total_steps = steps_per_epoch * spec.epochs

    shapes = {m: tuple(x.shape[1:]) for m, x in inputs_all.items()}
    vocab_sizes = _vocab_sizes(data, modalities)
    if multimodal:
        model = build_model(model_spec, shapes, data.num_classes, kinds=kinds,
                            vocab_sizes=vocab_sizes).to(device)
        shape_meta = {"input_shapes": json.dumps({m: list(s) for m, s in shapes.items()}),
                      "modality_kinds": json.dumps({m: kinds.get(m, m) for m in modalities}),
                      "vocab_sizes": json.dumps(vocab_sizes)}
    else:
        model = build_model(model_spec, shapes["image"], data.num_classes).to(device)
        shape_meta = {"input_shape": json.dumps(list(shapes["image"]))}

    def forward(mixed: Mixed) -> torch.Tensor:
        if multimodal:
            return model(mixed.inputs, mixed)
        return model(mixed.inputs["image"], mixed)

    def split(idx: torch.Tensor) -> tuple[Inputs, torch.Tensor, Normalize]:
        rows = idx.to(home)
        if multimodal:
            return {m: x[rows] for m, x in inputs.items()}, labels[rows], normalize
        return inputs["image"][rows], labels[rows], normalize["image"]

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    order_gen = torch.Generator(device=home).manual_seed(spec.seed)
    mix_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    # host-side draws (manifold mixup's layer) so the loop never waits for the GPU
    host_gen = torch.Generator().manual_seed(spec.seed + 2)
    no_mix = MixSpec(method="none")
    mix_kinds = {m: kinds.get(m, m) for m in modalities}

    val_split = split(val_idx)  # gathered once, evaluated every epoch
    device_name = describe(device)
    hooks.on_start(device_name, total_steps)
    step, epochs_done, started = 0, 0, time.perf_counter()
    last_metrics: dict[str, float] = {}
    for epoch in range(1, spec.epochs + 1):
        model.train()
        epoch_mix = mix_spec if mix_spec.active_at(epoch, spec.epochs) else no_mix
        order = torch.randperm(n_train, generator=order_gen, device=home)
        loss_sum = torch.zeros((), device=device)
        epoch_started = time.perf_counter()
        for b in range(steps_per_epoch):
            if hooks.should_stop():
                return TrainResult("stopped", device_name, epochs_done, step, last_metrics)
            idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            batch = _batch(train_inputs, normalize, idx, device)
            y = train_labels[idx].to(device, non_blocking=True)
            mixed = mix(batch, y, epoch_mix, mix_gen, data.num_classes,
                        kinds=mix_kinds, host_generator=host_gen)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = forward(mixed)
            loss = soft_cross_entropy(logits, mixed.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.shape[0]
            step += 1
            elapsed = time.perf_counter() - epoch_started
            done_in_epoch = min((b + 1) * spec.batch_size, n_train)
            rate = done_in_epoch / elapsed if elapsed > 0 else 0.0
            per_step = (time.perf_counter() - started) / step
            hooks.on_progress(Progress(epoch, step, total_steps, rate,
                                       per_step * (total_steps - step)))

        val = evaluate(model, *val_split, device, spec.eval_batch_size, amp)
        # the one host sync of the epoch
        last_metrics = {"train_loss": (loss_sum / samples_per_epoch).item(),
                        **{f"val_{k}": v.item() for k, v in val.items()}}
        epochs_done = epoch
        hooks.on_epoch_end(epoch, step, last_metrics)
        hooks.on_checkpoint(epoch, _state_to_cpu(model), {
            "epoch": str(epoch), "step": str(step),
            "model_spec": json.dumps(asdict(model_spec)),
            **shape_meta,
            "class_names": json.dumps(data.class_names)})

    test_split = split(test_idx)
    test = evaluate(model, *test_split, device, spec.eval_batch_size, amp,
                    report=data.class_names)
    report = test.pop("report")
    final = {**last_metrics, **{f"test_{k}": v.item() for k, v in test.items()}}
    if multimodal:
        final.update(_robustness(model, test_split, modalities, device, spec, amp))
    final["train_time_s"] = time.perf_counter() - started
    return TrainResult("completed", device_name, epochs_done, step, final, report)


def _robustness(model: torch.nn.Module, test_split: tuple[Inputs, torch.Tensor, Normalize],
                modalities: list[str], device: torch.device, spec: TrainSpec,
                amp: torch.dtype | None) -> dict[str, float]:
    """Test accuracy with each modality missing for every sample
    (``test_acc_without_<m>``) and with Gaussian noise of 0.1 train-std on the
    float inputs (``test_acc_noise``)."""
    accs = {}
    for m in modalities:
        accs[f"test_acc_without_{m}"] = evaluate(model, *test_split, device, spec.eval_batch_size,
                                                 amp, absent=(m,))["acc"]
    noise_gen = torch.Generator(device=device).manual_seed(spec.seed + 3)
    # inputs are standardised with train statistics, so 0.1 here is 0.1 · std
    accs["test_acc_noise"] = evaluate(model, *test_split, device, spec.eval_batch_size, amp,
                                      noise=0.1, generator=noise_gen)["acc"]
    return {k: v.item() for k, v in accs.items()}
