"""What a run trains with: ``TrainSpec``, the recipe, as a plain dataclass.

Every check that needs only the spec itself lives here (the API turns the
``ValueError`` into a 422 naming the field); checks against a dataset live in
``app.ml.training.checks``.
"""

from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step", "onecycle")
AUGMENTS = ("crop", "flip")
CHECKPOINTS = ("best", "last")
CALIBRATIONS = ("none", "temperature")
MODES = ("min", "max")
DEFAULT_AUGMENT = ("crop",)

# validation metrics where lower is better; every other one is maximised
_LOWER_IS_BETTER = ("loss", "nll", "ece", "brier", "kl")


def metric_mode(metric: str) -> str:
    """``min`` for losses and calibration errors, ``max`` for scores; a task's
    metric (``val_loss.<task>``) by the part before the task."""
    name = metric.split(".", 1)[0]
    if name.startswith(("val_recon_", "test_recon_")):  # an autoencoder's per modality
        return "min"
    return "min" if any(name.endswith(s) for s in _LOWER_IS_BETTER) else "max"


def world_size_problem(world_size: int, batch_size: int, device: str) -> str | None:
    """Why a run cannot train on ``world_size`` processes, or None."""
    if world_size < 1:
        return "must be >= 1"
    if world_size > 1 and batch_size < 2 * world_size:
        return (f"batch_size {batch_size} is split across {world_size} processes and each "
                f"must mix at least 2 samples: use a batch_size of {2 * world_size} or more")
    if world_size > 1 and ":" in device:
        return (f"each of the {world_size} processes takes a device of its own: set device to "
                f"auto, cpu or cuda, not {device}")
    return None


@dataclass(frozen=True)
class EarlyStopping:
    """Stop once ``metric`` (a validation metric, e.g. ``val_acc``) has not
    improved for ``patience`` epochs; ``mode`` None infers it from the name."""

    metric: str = "val_acc"
    patience: int = 10
    mode: str | None = None

    def __post_init__(self) -> None:
        if not self.metric.startswith("val_"):
            raise ValueError("early_stopping.metric: must be a validation metric (val_…), "
                             f"not {self.metric!r}")
        if self.patience < 1:
            raise ValueError("early_stopping.patience: must be >= 1")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"early_stopping.mode: must be one of min, max, not {self.mode!r}")

    @property
    def direction(self) -> str:
        return self.mode or metric_mode(self.metric)


@dataclass(frozen=True)
class TrainSpec:
    """The training recipe; ``docs/training.md`` explains why the defaults are these.

    ``lr`` is the peak learning rate, reached after ``warmup_epochs`` (default:
    5 % of the run) linearly from ``lr / warm-up steps``; ``schedule`` then
    sets it per step: ``cosine`` decays to 0 at the end, ``step`` multiplies by
    ``gamma`` at each epoch of ``milestones`` (default: 50 % and 75 % of the
    run), ``onecycle`` follows torch's OneCycleLR (a cosine rise from lr/25 over
    ``warmup_epochs``, or 30 % of the run, then a cosine fall to lr/10⁵).
    ``ema``: the decay of an exponential moving average of the weights, which
    is then what is validated, tested and saved. ``augment``: ``crop`` (pad by
    ``crop_padding``, default ⌈side/8⌉, and crop back at a random offset) and
    ``flip`` (horizontal, p = ½) on image modalities, batched on the device;
    None applies ``DEFAULT_AUGMENT`` to the image modalities there are (but not
    for an autoencoder, ``app.ml.training.autoencode``).
    ``checkpoint``: ``last`` keeps the last epoch's model, ``best`` the epoch
    with the best ``checkpoint_metric`` (default: the task's headline
    validation metric), and the run then reports the test figures of both
    (``test_acc`` of the kept model, ``test_acc_last``). ``log_every_steps``:
    how often the per-step training loss and the learning rate enter the
    metric history (None: about 10 times an epoch); they are buffered on the
    device and read once an epoch. ``calibration``: ``temperature`` fits T on
    the validation split of the kept model. ``compile``: ``torch.compile`` the
    model's training forward (``app.ml.training.fast``); where it cannot
    compile, the run trains eagerly and its device string says why.
    ``world_size``: processes the run trains on (``app.ml.training.distributed``);
    ``batch_size`` stays the global batch, split across them.
    """

    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int | None = None
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    grad_clip: float | None = None
    ema: float | None = None
    augment: tuple[str, ...] | None = None
    crop_padding: int | None = None
    early_stopping: EarlyStopping | None = None
    checkpoint: str = "last"
    checkpoint_metric: str | None = None
    log_every_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024
    calibration: str = "temperature"
    compile: bool = False
    world_size: int = 1

    def __post_init__(self) -> None:
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "checkpoint": CHECKPOINTS,
                   "calibration": CALIBRATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, name)!r}")
        for a in self.augment or ():
            if a not in AUGMENTS:
                raise ValueError(f"augment: must be among {', '.join(AUGMENTS)}, not {a!r}")
        if self.epochs < 0 or self.batch_size < 1:  # 0 epochs: evaluate the initial model
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        if not self.lr > 0:
            raise ValueError("lr: must be > 0")
        if self.weight_decay < 0:
            raise ValueError("weight_decay: must be >= 0")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum: must be in [0, 1)")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs: must be in [0, epochs) = [0, {self.epochs}), "
                             f"not {self.warmup_epochs}")
        if any(not 0 < m <= self.epochs for m in self.milestones) or \
                list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones: must be increasing epochs in 1..{self.epochs}")
        if not 0 < self.gamma <= 1:
            raise ValueError("gamma: must be in (0, 1]")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError("grad_clip: must be > 0")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError("ema: the decay must be in (0, 1)")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ValueError("crop_padding: must be >= 0")
        if self.checkpoint_metric is not None and not self.checkpoint_metric.startswith("val_"):
            raise ValueError("checkpoint_metric: must be a validation metric (val_…), "
                             f"not {self.checkpoint_metric!r}")
        if self.log_every_steps is not None and self.log_every_steps < 1:
            raise ValueError("log_every_steps: must be >= 1")
        problem = world_size_problem(self.world_size, self.batch_size, self.device)
        if problem:
            raise ValueError(f"world_size: {problem}")

    @property
    def warmup(self) -> int:
        """``warmup_epochs``, or 5 % of the epochs (5 of 100; none under 20)."""
        return self.warmup_epochs if self.warmup_epochs is not None else self.epochs // 20

    @property
    def augmentations(self) -> tuple[str, ...]:
        return DEFAULT_AUGMENT if self.augment is None else self.augment

    def step_milestones(self) -> tuple[int, ...]:
        """The ``step`` schedule's epochs: ``milestones``, or 50 % and 75 % of the run."""
        if self.milestones:
            return self.milestones
        return tuple(sorted({max(1, self.epochs // 2), max(1, (3 * self.epochs) // 4)}))
