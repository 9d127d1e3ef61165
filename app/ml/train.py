"""The training loop: tensor-resident data, batched mixing, no per-step host sync.

The prepared dataset stays as tensors (on the GPU when it fits); batches are
made by indexing; the running loss is a device tensor read once per epoch.
Everything the outside world sees goes through ``TrainHooks``, so the same loop
serves the worker (which writes to Postgres) and a notebook (which may print).
"""

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.device import autocast_dtype, describe, resolve_device
from app.ml.metrics import classification_metrics, soft_cross_entropy
from app.ml.mixing import MixSpec, mix
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


class _Normalizer:
    """Per-channel standardisation with train-split statistics, applied per batch
    so the resident copy can stay in its compact dtype (uint8 images)."""

    def __init__(self, train_images: torch.Tensor, device: torch.device) -> None:
        x = train_images.float()
        dims = [0, *range(2, x.dim())]
        self.mean = x.mean(dim=dims).view(1, -1, *([1] * (x.dim() - 2))).to(device)
        self.inv_std = (1.0 / x.std(dim=dims).clamp_min(1e-6)).view_as(self.mean.cpu()).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize: _Normalizer, device: torch.device, batch_size: int,
             amp: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Metrics over a whole split, as device tensors."""
    model.eval()
    logits = []
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits.append(model(x).float())
    return classification_metrics(torch.cat(logits), labels.to(device))


def _state_to_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # copy=True: on CPU .to() would hand out the live parameters, which the next
    # optimizer step overwrites under whoever holds the checkpoint.
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in model.state_dict().items()}


def train(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
          spec: TrainSpec, hooks: TrainHooks | None = None) -> TrainResult:
    """Train a classifier on ``data``'s image modality with ``mix_spec`` mixing.

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
    images_all, labels_all = data.inputs["image"], data.labels
    train_idx, val_idx, test_idx = (data.split_indices(s) for s in ("train", "val", "test"))

    home = _data_device([images_all, labels_all], device)
    images, labels = images_all.to(home), labels_all.to(home)
    train_images, train_labels = images[train_idx.to(home)], labels[train_idx.to(home)]
    normalize = _Normalizer(train_images, device)
    n_train = train_images.shape[0]
    steps_per_epoch = -(-n_train // spec.batch_size)
    if n_train > 1 and n_train % spec.batch_size == 1:
        # a last batch of one cannot be mixed and breaks BatchNorm; it is dropped
        # (a different sample each epoch, since the order is reshuffled)
        steps_per_epoch -= 1
    samples_per_epoch = min(steps_per_epoch * spec.batch_size, n_train)
    total_steps = steps_per_epoch * spec.epochs

    model = build_model(model_spec, tuple(images_all.shape[1:]), data.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    order_gen = torch.Generator(device=home).manual_seed(spec.seed)
    mix_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    # host-side draws (manifold mixup's layer) so the loop never waits for the GPU
    host_gen = torch.Generator().manual_seed(spec.seed + 2)
    no_mix = MixSpec(method="none")
    kinds = dict(data.modality_kinds)

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
            x = normalize(train_images[idx].to(device, non_blocking=True))
            y = train_labels[idx].to(device, non_blocking=True)
            mixed = mix({"image": x}, y, epoch_mix, mix_gen, data.num_classes,
                        kinds={"image": kinds.get("image", "image")}, host_generator=host_gen)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(mixed.inputs["image"], mixed)
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

        val = evaluate(model, images[val_idx.to(home)], labels[val_idx.to(home)], normalize,
                       device, spec.eval_batch_size, amp)
        # the one host sync of the epoch
        last_metrics = {"train_loss": (loss_sum / samples_per_epoch).item(),
                        **{f"val_{k}": v.item() for k, v in val.items()}}
        epochs_done = epoch
        hooks.on_epoch_end(epoch, step, last_metrics)
        hooks.on_checkpoint(epoch, _state_to_cpu(model), {
            "epoch": str(epoch), "step": str(step),
            "model_spec": json.dumps(asdict(model_spec)),
            "input_shape": json.dumps(list(images_all.shape[1:])),
            "class_names": json.dumps(data.class_names)})

    test = evaluate(model, images[test_idx.to(home)], labels[test_idx.to(home)], normalize,
                    device, spec.eval_batch_size, amp)
    final = {**last_metrics, **{f"test_{k}": v.item() for k, v in test.items()}}
    final["train_time_s"] = time.perf_counter() - started
    return TrainResult("completed", device_name, epochs_done, step, final)
