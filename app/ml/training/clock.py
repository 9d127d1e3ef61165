"""How many steps a run takes, and its progress (rate, ETA) for the hooks."""

import time
from dataclasses import dataclass

from app.ml.training.hooks import Progress


@dataclass(frozen=True)
class StepPlan:
    """How many steps a run takes. A last batch of one is dropped: it cannot be
    mixed (and has no negatives for a contrastive loss) and breaks BatchNorm; a
    different sample each epoch, since the order is reshuffled. Over
    ``world_size`` ranks, a last batch that leaves a rank fewer than two rows is
    dropped for the same reason."""
    steps_per_epoch: int
    samples_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, n_train: int, batch_size: int, epochs: int,
           world_size: int = 1) -> "StepPlan":
        steps = -(-n_train // batch_size)
        if steps > 1 and 0 < n_train % batch_size < 2 * world_size:
            steps -= 1
        return cls(steps, min(steps * batch_size, n_train), steps * epochs)


class ProgressClock:
    """Progress for the hooks: the rate within the epoch, and an ETA from the steps
    this call has trained (a resumed run does not count the earlier attempt's)."""

    def __init__(self, plan: StepPlan, batch_size: int, n_train: int, first_step: int) -> None:
        self.plan, self.batch_size, self.n_train = plan, batch_size, n_train
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
        return Progress(epoch, step, self.plan.total_steps, rate,
                        per_step * (self.plan.total_steps - step))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
