"""One "host" of the two-host test: ``python -m tests.unit.ddp_host ADDRESS_FILE RANK``.

Rank 0 serves the run's TCPStore and writes its address to ADDRESS_FILE; rank 1
waits for that file and joins. Each trains the same tiny digits model in the
shared loop and prints one JSON line: its weights' checksum and the result.
"""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from app.ml.data import load_digits
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.tasks import get_task
from app.ml.training import TrainHooks, TrainSpec
from app.ml.training.classify import ClassifierObjective
from app.ml.training.distributed import Rendezvous, joined, serve
from app.ml.training.loop import run
from tests.recipes import SHORT
from tests.unit.ddp_ranks import checksum

WAIT_S = 120.0


def rendezvous_of(address: Path, rank: int) -> tuple[Rendezvous, object]:
    if rank == 0:
        store, rendezvous = serve("127.0.0.1", 2, WAIT_S)
        written = address.with_suffix(".tmp")
        written.write_text(json.dumps(asdict(rendezvous)))
        written.rename(address)  # whole, or not at all
        return rendezvous, store
    deadline = time.monotonic() + WAIT_S
    while not address.exists():  # the other host's event: its store is up
        if time.monotonic() > deadline:
            raise TimeoutError("host 0 did not publish its store")
        time.sleep(0.05)
    return Rendezvous(**json.loads(address.read_text())), None


def main(address: Path, rank: int) -> None:
    torch.set_num_threads(1)
    spec = TrainSpec(epochs=2, batch_size=64, seed=0, device="cpu", world_size=2, **SHORT)
    device = torch.device("cpu")
    rendezvous, store = rendezvous_of(address, rank)
    data = load_digits()
    with joined(rendezvous, rank, device, store) as ranks:  # type: ignore[arg-type]
        torch.manual_seed(spec.seed)
        objective = ClassifierObjective(data, ModelSpec(width=8, depth=2),
                                        MixSpec("mixup", alpha=1.0), spec,
                                        get_task("classification"), device)
        result = run(objective, spec, TrainHooks(), device, objective.home, ranks=ranks)
    print(json.dumps({"checksum": checksum(objective.model), "steps": result.steps,
                      "test_acc": result.metrics.get("test_acc"), "device": result.device}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
