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
from app.ml.training.distributed import SOLO, Ranks, rank_seed
from app.ml.training.fast import Speed, align_optimizer_state
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


def make_generators(seed: int, home: torch.device, device: torch.device, rank: int = 0
                    ) -> dict[str, torch.Generator]:
    """The run's random streams: data order (where the data lives; alike on every
    rank), mixing and augmentation (on the device), and host-side draws (manifold
    mixup's layer), so the loop never waits for the GPU to pick a number. Each
    rank mixes with its own streams (``rank_seed``; rank 0's are a solo run's)."""
    return {"order": torch.Generator(device=home).manual_seed(seed),
            "mix": torch.Generator(device=device).manual_seed(rank_seed(seed, 1, rank)),
            "host": torch.Generator().manual_seed(rank_seed(seed, 2, rank)),
            "augment": torch.Generator(device=device).manual_seed(rank_seed(seed, 4, rank))}


def run(objective: Objective, spec: TrainSpec, hooks: TrainHooks, device: torch.device,
        home: torch.device, resume: ResumePoint | None = None,
        ranks: Ranks = SOLO) -> TrainResult:
    """Train ``objective.model`` by ``spec``'s recipe; see the module docstring and,
    for several processes, ``app.ml.training.distributed``."""
    model = objective.model
    try:  # _run swaps in the DDP replica
        return _run(objective, model, spec, hooks if ranks.is_leader else TrainHooks(),
                    device, home, resume, ranks)
    finally:
        objective.model = model


def _run(objective: Objective, model: nn.Module, spec: TrainSpec, hooks: TrainHooks,
         device: torch.device, home: torch.device, resume: ResumePoint | None,
         ranks: Ranks) -> TrainResult:
    speed = Speed.prepare(model, device)  # first: the optimizer and the average copy its layout
    optimizer = build_optimizer(model, spec, objective.no_decay)
    # only rank 0 evaluates, so only it keeps the weight average
    ema = build_ema(model, spec.ema) if ranks.is_leader else None
    generators = make_generators(spec.seed, home, device, ranks.rank)
    ranks.seed_process(spec.seed)
    selection = Selection.of(spec, objective.headline)
    state = LoopState()
    if resume is not None:
        state = restore(ranks.own_point(resume), model, optimizer, generators, device, ema,
                        selection)
        align_optimizer_state(optimizer)
    if spec.compile and state.epoch < spec.epochs:
        # each rank compiles alone, on its own share's shape, before DDP wraps the model
        speed.compile(model, lambda: _probe(objective, spec, home, device, state.epoch + 1,
                                            ranks))
    # train_loss reaches the model through objective.model: DDP must see each step
    objective.model = ranks.wrap(model)

    def evaluated() -> nn.Module:
        return ema.module if ema is not None else model

    plan = StepPlan.of(objective.n_train, spec.batch_size, spec.epochs, ranks.world_size)
    spe = plan.steps_per_epoch
    log_every = spec.log_every_steps or max(1, math.ceil(spe / STEP_POINTS_PER_EPOCH))

    def device_name() -> str:  # a compile that fails later shows in it
        return ranks.describe(describe(device, speed.notes()))

    hooks.on_start(device_name(), plan.total_steps)
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
            if ranks.any(hooks.should_stop()):  # rank 0 decides, every rank stops here
                return TrainResult("stopped", device_name(), state.epoch, state.step,
                                   state.last_metrics)
            lr = spec.lr * lr_factor(spec, state.step, spe)
            set_lr(optimizer, lr)
            lrs.append(lr)
            rows = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            idx = ranks.shard(rows)
            loss = objective.train_loss(idx, epoch, generators)
            optimizer.zero_grad(set_to_none=True)
            ranks.for_backward(loss, idx.shape[0], rows.shape[0]).backward()
            clip_gradients(model, spec.grad_clip)
            optimizer.step()
            objective.after_step()
            if ema is not None:
                ema.update_parameters(model)
            step_losses[b] = loss.detach() * ranks.share(idx.shape[0], rows.shape[0])
            loss_sum += loss.detach() * idx.shape[0]
            state.step += 1
            hooks.on_progress(clock.progress(epoch, b, state.step))

        # validated once, on rank 0
        val = {**{f"val_{k}": v for k, v in objective.validate(evaluated()).items()},
               **objective.epoch_metrics(evaluated())} if ranks.is_leader else {}
        # the one host sync of the epoch
        values = torch.cat([(loss_sum / plan.samples_per_epoch).view(1),
                            torch.stack(list(val.values())).float().view(-1) if val
                            else torch.zeros(0, device=device),
                            step_losses]).tolist()
        # every rank's share of the losses summed, rank 0's figures sent to all
        trained = ranks.sum([values[0], *values[1 + len(val):]])
        state.last_metrics = ranks.from_leader(
            {"train_loss": trained[0], **dict(zip(val, values[1:1 + len(val)], strict=True))})
        losses = trained[1:]
        diverged = [k for k in ("train_loss", "val_loss")
                    if not math.isfinite(state.last_metrics.get(k, 0.0))]
        if diverged or not all(math.isfinite(x) for x in losses):
            # every rank sees the same figures, so every rank stops here
            what = diverged[0] if diverged else "train_loss_step"
            raise ValueError(f"training diverged in epoch {epoch}: {what} is "
                             f"{state.last_metrics.get(what, 'not finite')}; try a smaller "
                             f"training.lr (now {spec.lr:g}), optimizer adamw or grad_clip")
        first = state.step - spe
        hooks.on_step_metrics(epoch, [(first + b + 1, {"train_loss_step": losses[b],
                                                       "lr": lrs[b]})
                                      for b in range(spe)
                                      if (first + b + 1) % log_every == 0 or b == spe - 1])
        state.epoch = epoch
        hooks.on_epoch_end(epoch, state.step, state.last_metrics)
        improved = selection.update(epoch, state.last_metrics)
        others = ranks.gather_rng(generators, device)
        if ranks.is_leader:  # only rank 0 keeps weights and writes checkpoints
            weights = snapshot(evaluated())
            if improved and spec.checkpoint == "best":
                state.best_weights = weights
            live = weights if ema is None else snapshot(model)
            point = ranks.attach(capture(state, live, optimizer, generators, device, ema,
                                         selection), others)
            emit_checkpoint(hooks, epoch, weights, _metadata(objective, state, None), point)
        done = selection.should_stop

    if not ranks.is_leader:  # the others only train; rank 0 tests and saves
        return TrainResult("completed", device_name(), state.epoch, state.step,
                           state.last_metrics)

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
    # a compile that failed after the start is in the result's device string
    return TrainResult("completed", device_name(), state.epoch, state.step, final, report)


def _probe(objective: Objective, spec: TrainSpec, home: torch.device, device: torch.device,
           epoch: int, ranks: Ranks = SOLO) -> None:
    """One training step's forward and backward on the first rows, with generators
    of its own, so that a compiled model compiles before the run starts. Torch's
    RNG (dropout), the model's buffers (BatchNorm statistics) and its gradients
    are left as they were: the run trains as it would have without it."""
    model = objective.model
    saved = [b.detach().clone() for b in model.buffers()]
    rows = ranks.shard(torch.arange(min(spec.batch_size, objective.n_train), device=home))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        try:
            objective.train_loss(rows, epoch, make_generators(spec.seed, home, device)).backward()
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, value in zip(model.buffers(), saved, strict=True):
                    buffer.copy_(value)


def _metadata(objective: Objective, state: LoopState, temperature: float | None,
              selected_epoch: int | None = None) -> dict[str, str]:
    meta = {**objective.metadata, "epoch": str(state.epoch), "step": str(state.step)}
    if temperature is not None:
        meta["temperature"] = repr(temperature)
    if selected_epoch is not None:
        meta["selected_epoch"] = str(selected_epoch)
    return meta
