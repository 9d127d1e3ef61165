"""Data-parallel runs on one worker: what the worker offers a run, and the ranks.

A run with ``training.world_size`` W > 1 trains as W processes of one process
group (``app.ml.training.distributed``): rank 0 is the worker process that
claimed the run, and it alone reports (the ``RunReporter``: progress, metrics,
checkpoints, its log, cancel and the time limit, which reach the other ranks
through the loop's per-step agreement); ranks 1…W-1 are processes it spawns,
which load the prepared dataset and the resume point from the artifact store
themselves and train without hooks. One per GPU on CUDA (rank r on GPU r),
otherwise CPU processes with gloo.

A worker offers ``MIXLAB_GPU_WORLD_SIZE`` (default: the GPUs it sees) or
``MIXLAB_CPU_WORLD_SIZE`` (default: its cores) processes; a run asking for more
fails at its claim, with the reason, instead of waiting for a bigger worker.
"""

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from app.ml.data import PreparedDataset
from app.ml.device import DeviceUnavailableError, resolve_device
from app.ml.resume import ResumePoint
from app.ml.resume import from_bytes as resume_from_bytes
from app.ml.training import TrainHooks, TrainResult, train
from app.ml.training.distributed import Ranks, Rendezvous, joined
from app.ml.training.launch import RankFailed, launch_local
from app.observability.logs import configure, run_context
from app.runs import spec as run_spec
from app.runs.spec import RunPlan
from app.services import prepared_data
from app.settings import get_settings
from app.storage import get_store

log = logging.getLogger(__name__)

__all__ = ["Job", "RankFailed", "offered", "refusal", "train_ranks"]


@dataclass(frozen=True)
class Job:
    """What another rank needs to train its share of an attempt, besides the plan."""

    run_id: uuid.UUID
    attempt: int
    project_id: uuid.UUID
    dataset_key: str
    resume_key: str | None  # the resume point the attempt continues from, if any

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        return cls(uuid.UUID(data["run_id"]), int(data["attempt"]), uuid.UUID(data["project_id"]),
                   data["dataset_key"], data["resume_key"])


def offered(device: str) -> tuple[int, str]:
    """How many processes this worker gives one run on ``device`` (a spec's
    ``training.device``), and the setting that says so."""
    settings = get_settings()
    if resolve_device(device).type == "cuda":
        return settings.gpu_world_size or torch.cuda.device_count(), "MIXLAB_GPU_WORLD_SIZE"
    return settings.cpu_world_size or os.cpu_count() or 1, "MIXLAB_CPU_WORLD_SIZE"


def refusal(plan: RunPlan) -> str | None:
    """Why this worker cannot train ``plan`` (passed to the claim), or None."""
    wanted = plan.training.world_size
    if wanted == 1:
        return None
    try:
        have, setting = offered(plan.training.device)
    except DeviceUnavailableError:
        return None  # training fails the run with the device's own reason
    if wanted > have:
        return f"training.world_size {wanted} > the {have} this worker offers ({setting})"
    return None


def _threads(world_size: int) -> int:
    """Torch threads of each rank: MIXLAB_TORCH_THREADS, else the cores shared out."""
    return get_settings().torch_threads or max(1, (os.cpu_count() or 1) // world_size)


def _rank_device(kind: str, rank: int) -> torch.device:
    return torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")


def train_ranks(data: PreparedDataset, plan: RunPlan, reporter: TrainHooks,
                resume: ResumePoint | None, init_weights: Mapping[str, torch.Tensor] | None,
                job: Job) -> TrainResult:
    """Train ``plan`` over ``plan.training.world_size`` processes, this one rank 0;
    ``RankFailed`` when another rank dies or raises (the attempt is over)."""
    settings = get_settings()
    world_size = plan.training.world_size
    kind = resolve_device(plan.training.device).type
    threads, before = _threads(world_size), torch.get_num_threads()

    def lead(ranks: Ranks) -> TrainResult:
        return train(data, plan.model, plan.mixing, plan.training, reporter, task=plan.task,
                     resume=resume, init_weights=init_weights, freeze=plan.start.freeze,
                     ranks=ranks, task_weights=plan.task_weights)

    def spawned(pids: list[int]) -> None:
        log.info("run %s attempt %d: %d ranks, %d torch threads each; ranks 1-%d are pids %s",
                 job.run_id, job.attempt, world_size, threads, world_size - 1,
                 " ".join(map(str, pids)))

    torch.set_num_threads(threads)
    try:
        result, others = launch_local(lead, follow, (job.to_json(), plan.source, threads),
                                      world_size, _rank_device(kind, 0),
                                      settings.dist_timeout_s, on_spawned=spawned)
    finally:
        torch.set_num_threads(before)
    disagree = {r: s for r, s in others.items()
                if (s["status"], s["steps"]) != (result.status, result.steps)}
    if disagree:  # the per-step agreement makes this impossible; say so if it happens
        log.error("ranks ended apart from rank 0 (%s at step %d): %s", result.status,
                  result.steps, disagree)
    else:
        log.info("all %d ranks %s at step %d", world_size, result.status, result.steps)
    return result


def follow(rank: int, rendezvous: Rendezvous, job_json: dict[str, Any],
           source: dict[str, Any], threads: int) -> dict[str, Any]:
    """Rank ``rank`` of the attempt, in its own process (``app.ml.training.follower``):
    it parses the run's stored spec again, loads what it trains on from the
    artifact store (no database), and logs lines that name the run."""
    settings = get_settings()
    configure(settings.log_format, settings.log_level)
    job = Job.from_json(job_json)
    with run_context(job.run_id, job.attempt, job.project_id):
        torch.set_num_threads(threads)
        plan = run_spec.parse(source["name"], uuid.UUID(source["dataset_id"]), source["task"],
                              source["spec"])
        store = get_store()
        # resident, as rank 0's (a data-parallel run never streams)
        data = prepared_data.open_for_training(store, job.dataset_key, settings, stream=False)
        resume = resume_from_bytes(store.get(job.resume_key)) if job.resume_key else None
        device = _rank_device(resolve_device(plan.training.device).type, rank)
        with joined(rendezvous, rank, device) as ranks:
            # no hooks: rank 0 reports; the weights come from rank 0 (DDP broadcasts them)
            result = train(data, plan.model, plan.mixing, plan.training, TrainHooks(),
                           task=plan.task, resume=resume, freeze=plan.start.freeze,
                           ranks=ranks, task_weights=plan.task_weights)
        log.info("rank %d of %d %s at step %d", rank, rendezvous.world_size, result.status,
                 result.steps)
        return {"status": result.status, "steps": result.steps}
