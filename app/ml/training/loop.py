"""The one training loop every task runs through.

A task supplies an ``Objective`` (the model, one step's loss, validation, the
final test); the loop owns everything else: the data order, the recipe
(optimizer, learning-rate schedule, clipping, weight average), progress, the
throttled per-step history, checkpoints, best-epoch selection, early
stopping and resume. It never syncs the host per step: per-step losses are
buffered on the device and read with the validation metrics once an epoch.
"""

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from app.ml.calibration import at_bound
from app.ml.device import describe
from app.ml.resume import ResumePoint
from app.ml.training.checkpoints import LoopState, Selection, capture, restore, snapshot
from app.ml.training.clock import ProgressClock, StepPlan
from app.ml.training.hooks import TrainHooks, TrainResult, emit_checkpoint
from app.ml.training.recipe import build_ema, build_optimizer, clip_gradients, lr_factor, set_lr
from app.ml.training.spec import TrainSpec

# per-step history points an epoch, when ``log_every_steps`` is not set
STEP_POINTS_PER_EPOCH = 10


class Objective(ABC):
    """What a task gives the loop."""

    model: nn.Module
    n_train: int
    headline: str  # the validation metric ``checkpoint: best`` follows by default (val_<h>)
    no_decay: tuple[str, ...] = ()  # parameters kept out of weight decay
    metadata: dict[str, str]  # what the checkpoint needs to rebuild a predictor

    @abstractmethod
    def train_loss(self, idx: torch.Tensor, epoch: int,
                   generators: dict[str, torch.Generator]) -> torch.Tensor:
        """The loss of one step on training rows ``idx`` (mixing included)."""

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's order of the training rows: a random permutation (a
        streamed objective shuffles within windows of shards instead)."""
        return torch.randperm(self.n_train, generator=generator, device=generator.device)

    def after_step(self) -> None:  # noqa: B027 - optional, most tasks need nothing here
        """After the optimizer's step (e.g. clamping a learned temperature)."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Unprefixed per-epoch values besides validation (0-d device tensors)."""
        return {}

    @abstractmethod
    def validate(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Validation metrics, unprefixed, as 0-d device tensors."""

    def calibrate(self, model: nn.Module) -> float | None:
        """A temperature fitted on the validation split, or None."""
        return None

    @abstractmethod
    def test(self, model: nn.Module, temperature: float | None
             ) -> tuple[dict[str, float], dict[str, object] | None]:
        """Final test metrics (``test_…``) and the per-class report, if any."""


def make_generators(seed: int, home: torch.device, device: torch.device
                    ) -> dict[str, torch.Generator]:
    """The run's random streams: data order (where the data lives), mixing and
    augmentation (on the device), and host-side draws (manifold mixup's layer),
    so the loop never waits for the GPU to pick a number."""
    return {"order": torch.Generator(device=home).manual_seed(seed),
            "mix": torch.Generator(device=device).manual_seed(seed + 1),
            "host": torch.Generator().manual_seed(seed + 2),
            "augment": torch.Generator(device=device).manual_seed(seed + 4)}


def run(objective: Objective, spec: TrainSpec, hooks: TrainHooks, device: torch.device,
        home: torch.device, resume: ResumePoint | None = None) -> TrainResult:
    """Train ``objective.model`` by ``spec``'s recipe; see the module docstring."""
    model = objective.model
    optimizer = build_optimizer(model, spec, objective.no_decay)
    ema = build_ema(model, spec.ema)
    generators = make_generators(spec.seed, home, device)
    selection = Selection.of(spec, objective.headline)
    state = LoopState()
    if resume is not None:
        state = restore(resume, model, optimizer, generators, device, ema, selection)

    def evaluated() -> nn.Module:
        return ema.module if ema is not None else model

    plan = StepPlan.of(objective.n_train, spec.batch_size, spec.epochs)
    spe = plan.steps_per_epoch
    log_every = spec.log_every_steps or max(1, math.ceil(spe / STEP_POINTS_PER_EPOCH))
    device_name = describe(device)
    hooks.on_start(device_name, plan.total_steps)
    clock = ProgressClock(plan, spec.batch_size, objective.n_train, first_step=state.step)
    point: ResumePoint | None = resume
    weights: dict[str, torch.Tensor] | None = None
    order_gen = generators["order"]
    done = state.epoch >= spec.epochs or selection.should_stop
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        if done:
            break
        model.train()
        order = objective.epoch_order(order_gen)
        loss_sum = torch.zeros((), device=device)
        step_losses = torch.zeros(spe, device=device)
        lrs = []
        clock.start_epoch()
        for b in range(spe):
            if hooks.should_stop():
                return TrainResult("stopped", device_name, state.epoch, state.step,
                                   state.last_metrics)
            lr = spec.lr * lr_factor(spec, state.step, spe)
            set_lr(optimizer, lr)
            lrs.append(lr)
            idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            loss = objective.train_loss(idx, epoch, generators)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, spec.grad_clip)
            optimizer.step()
            objective.after_step()
            if ema is not None:
                ema.update_parameters(model)
            step_losses[b] = loss.detach()
            loss_sum += loss.detach() * idx.shape[0]
            state.step += 1
            hooks.on_progress(clock.progress(epoch, b, state.step))

        val = {**{f"val_{k}": v for k, v in objective.validate(evaluated()).items()},
               **objective.epoch_metrics(evaluated())}
        # the one host sync of the epoch
        values = torch.cat([(loss_sum / plan.samples_per_epoch).view(1),
                            torch.stack(list(val.values())).float().view(-1) if val
                            else torch.zeros(0, device=device),
                            step_losses]).tolist()
        state.last_metrics = {"train_loss": values[0],
                              **dict(zip(val, values[1:1 + len(val)], strict=True))}
        losses = values[1 + len(val):]
        first = state.step - spe
        hooks.on_step_metrics(epoch, [(first + b + 1, {"train_loss_step": losses[b],
                                                       "lr": lrs[b]})
                                      for b in range(spe)
                                      if (first + b + 1) % log_every == 0 or b == spe - 1])
        state.epoch = epoch
        hooks.on_epoch_end(epoch, state.step, state.last_metrics)
        weights = snapshot(evaluated())
        if selection.update(epoch, state.last_metrics) and spec.checkpoint == "best":
            state.best_weights = weights
        live = weights if ema is None else snapshot(model)
        point = capture(state, live, optimizer, generators, device, ema, selection)
        emit_checkpoint(hooks, epoch, weights, _metadata(objective, state, None), point)
        done = selection.should_stop

    final_model = evaluated()
    final: dict[str, float] = {}
    if spec.checkpoint == "best":
        # the last epoch's figures first, then the selected epoch's weights
        last_test, _ = objective.test(final_model, None)
        final.update({f"{k}_last": v for k, v in last_test.items()})
        if state.best_weights is not None:
            final_model.load_state_dict(state.best_weights)
        final["selected_epoch"] = float(selection.best_epoch)
    if selection.stopped_epoch is not None:
        final["stopped_epoch"] = float(selection.stopped_epoch)
    temperature = objective.calibrate(final_model) if spec.calibration == "temperature" else None
    test, report = objective.test(final_model, temperature)
    final = {**state.last_metrics, **test, **final}
    if temperature is not None:
        final["temperature"] = temperature
        final["temperature_at_bound"] = float(at_bound(temperature))
    final["train_time_s"] = clock.elapsed()
    # the run's checkpoint: the selected model, with what predicting needs; the
    # last epoch's resume point again, so a crash from here ends the same way
    selected = snapshot(final_model)
    emit_checkpoint(hooks, selection.best_epoch if spec.checkpoint == "best" else state.epoch,
                    selected, _metadata(objective, state, temperature,
                                        selection.best_epoch if spec.checkpoint == "best"
                                        else None), point)
    return TrainResult("completed", device_name, state.epoch, state.step, final, report)


def _metadata(objective: Objective, state: LoopState, temperature: float | None,
              selected_epoch: int | None = None) -> dict[str, str]:
    meta = {**objective.metadata, "epoch": str(state.epoch), "step": str(state.step)}
    if temperature is not None:
        meta["temperature"] = repr(temperature)
    if selected_epoch is not None:
        meta["selected_epoch"] = str(selected_epoch)
    return meta
