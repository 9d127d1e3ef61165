"""Followers for the data-parallel tests: module-level functions a rank process
imports (``launch_local`` names them; their arguments are JSON), and the digits
recipe both sides build."""

import hashlib
from pathlib import Path
from typing import Any

import torch

from app.ml.data import load_digits
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec
from app.ml.resume import ResumePoint
from app.ml.resume import from_bytes as resume_from_bytes
from app.ml.training import TrainHooks, TrainSpec, train
from app.ml.training.distributed import Rendezvous, joined
from tests.recipes import SHORT

MODEL, MIXING = ModelSpec(width=8, depth=2), MixSpec("mixup", alpha=1.0)


def recipe(world_size: int, epochs: int) -> TrainSpec:
    return TrainSpec(epochs=epochs, batch_size=64, seed=0, device="cpu", world_size=world_size,
                     **SHORT)


class Counter(TrainHooks):
    """Counts every hook call: a rank that is not 0 must see none."""

    def __init__(self) -> None:
        self.calls = 0

    def on_start(self, device: str, total_steps: int) -> None:
        self.calls += 1

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.calls += 1

    def on_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1


def checksum(model: torch.nn.Module) -> str:
    """The parameters' bytes hashed: equal on ranks that hold the same model."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def follow_digits(rank: int, rendezvous: Rendezvous, epochs: int,
                  resume: str | None = None) -> dict[str, Any]:
    """``recipe(2, epochs)`` on digits, from the resume point in file ``resume``."""
    torch.set_num_threads(1)
    hooks = Counter()
    point: ResumePoint | None = resume_from_bytes(Path(resume).read_bytes()) if resume else None
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        result = train(load_digits(), MODEL, MIXING, recipe(rendezvous.world_size, epochs),
                       hooks, resume=point, ranks=ranks)
    return {"status": result.status, "steps": result.steps, "hook_calls": hooks.calls,
            "metrics": result.metrics}


def global_batch_gradient(ranks: Any) -> dict[str, Any]:
    """One step of a linear model on a batch of 7 rows split 4 / 3 over two ranks,
    and what the ranks agree on: the gradient DDP leaves on this rank, the
    reductions of ``Ranks``."""
    from app.ml.training.loop import make_generators

    torch.manual_seed(0)  # the same data on every rank; the model differs until DDP
    x, y = torch.randn(7, 3), torch.randn(7)
    model = torch.nn.Linear(3, 1)
    if ranks.rank > 0:
        torch.nn.init.zeros_(model.weight)  # DDP must replace it with rank 0's
    replica = ranks.wrap(model)
    rows = torch.arange(7)
    idx = ranks.shard(rows)
    loss = ((replica(x[idx]).squeeze(1) - y[idx]) ** 2).mean()
    ranks.for_backward(loss, idx.shape[0], rows.shape[0]).backward()
    mix = make_generators(0, torch.device("cpu"), torch.device("cpu"), ranks.rank)["mix"]
    return {"weight": model.weight.detach().tolist(), "grad": model.weight.grad.tolist(),
            "rows": idx.tolist(),
            "loss_sum": ranks.sum([loss.item() * ranks.share(idx.shape[0], 7),
                                   float(ranks.rank)]),
            "stop": [ranks.any(ranks.rank == 1), ranks.any(False)],
            "leader_says": ranks.from_leader({"val_acc": 0.5} if ranks.is_leader else None),
            "first_draw": torch.rand(1, generator=mix).item()}


def follow_gradient(rank: int, rendezvous: Rendezvous) -> dict[str, Any]:
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        return global_batch_gradient(ranks)


def follow_and_die(rank: int, rendezvous: Rendezvous) -> dict[str, Any]:
    """Joins, takes part in one collective, then is killed as a lost node would be."""
    import os
    import signal

    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        ranks.any(False)
        os.kill(os.getpid(), signal.SIGKILL)
    return {}


def follow_and_raise(rank: int, rendezvous: Rendezvous) -> dict[str, Any]:
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        ranks.any(False)
        raise ValueError("a follower's own error")


def follow_forever(rank: int, rendezvous: Rendezvous) -> dict[str, Any]:
    """Waits in collectives for as long as rank 0 takes part in them."""
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        while not ranks.any(False):
            pass
    return {}


def lead_until_peer_fails(ranks: Any) -> None:
    """Rank 0's side of the failure tests: collectives until one fails."""
    while not ranks.any(False):
        pass


def follow_compiled(rank: int, rendezvous: Rendezvous, epochs: int) -> dict[str, Any]:
    """``recipe(2, epochs)`` with ``compile`` on, through dynamo's ``eager`` backend
    (tracing without Inductor: quick, no C++ compiler)."""
    from dataclasses import replace

    from app.ml.training import fast

    fast.COMPILE_BACKEND = "eager"
    torch.set_num_threads(1)
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        result = train(load_digits(), MODEL, MIXING,
                       replace(recipe(rendezvous.world_size, epochs), compile=True),
                       ranks=ranks)
    return {"status": result.status, "steps": result.steps, "device": result.device,
            "metrics": result.metrics}


# a VAE with latent mixup: DDP carries the autoencoder's output dataclass
VAE = ModelSpec(kind="multimodal_vae", width=4, depth=1, dim=8, latent_dim=4,
                modality_dropout=0.3)
LATENT_MIXING = MixSpec("latent_mixup", alpha=1.0)


def follow_vae(rank: int, rendezvous: Rendezvous, epochs: int) -> dict[str, Any]:
    """``recipe(2, epochs)`` of the VAE on avmnist."""
    from app.ml.data.avmnist import load_avmnist

    torch.set_num_threads(1)
    hooks = Counter()
    with joined(rendezvous, rank, torch.device("cpu")) as ranks:
        result = train(load_avmnist(), VAE, LATENT_MIXING,
                       recipe(rendezvous.world_size, epochs), hooks, ranks=ranks)
    return {"status": result.status, "steps": result.steps, "hook_calls": hooks.calls}
