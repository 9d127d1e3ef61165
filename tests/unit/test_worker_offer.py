"""What a worker offers a data-parallel run (worker.ranks), decided at the claim."""

import uuid
from collections.abc import Iterator

import pytest

from app.runs import spec as run_spec
from app.settings import get_settings
from worker import ranks


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def plan(world_size: int, device: str = "cpu") -> run_spec.RunPlan:
    return run_spec.parse("t", uuid.uuid4(), "classification",
                          {"training": {"world_size": world_size, "device": device}})


def test_a_cpu_worker_offers_its_setting_and_refuses_more(settings):
    settings.setenv("MIXLAB_CPU_WORLD_SIZE", "2")
    assert ranks.offered("cpu") == (2, "MIXLAB_CPU_WORLD_SIZE")
    assert ranks.refusal(plan(1)) is None and ranks.refusal(plan(2)) is None
    assert ranks.refusal(plan(3)) == ("training.world_size 3 > the 2 this worker offers "
                                      "(MIXLAB_CPU_WORLD_SIZE)")


def test_a_gpu_worker_offers_the_gpus_it_sees(settings):
    settings.setattr(ranks, "resolve_device", lambda device: ranks.torch.device("cuda"))
    settings.setattr(ranks.torch.cuda, "device_count", lambda: 4)
    assert ranks.offered("auto") == (4, "MIXLAB_GPU_WORLD_SIZE")
    assert ranks.refusal(plan(8, "cuda")) == ("training.world_size 8 > the 4 this worker "
                                              "offers (MIXLAB_GPU_WORLD_SIZE)")
    settings.setenv("MIXLAB_GPU_WORLD_SIZE", "8")
    get_settings.cache_clear()
    assert ranks.refusal(plan(8, "cuda")) is None


def test_a_cuda_run_on_a_worker_without_cuda_fails_with_the_devices_reason(settings):
    settings.setattr(ranks.torch.cuda, "is_available", lambda: False)
    assert ranks.refusal(plan(2, "cuda")) is None  # train() then says CUDA is missing


def test_the_plan_keeps_what_it_was_parsed_from_for_the_other_ranks():
    parsed = plan(2)
    again = run_spec.parse(parsed.source["name"], uuid.UUID(parsed.source["dataset_id"]),
                           parsed.source["task"], parsed.source["spec"])
    assert again == parsed and again.training.world_size == 2
    job = ranks.Job(uuid.uuid4(), 2, uuid.uuid4(), "datasets/x/prepared.safetensors", None)
    assert ranks.Job.from_json(job.to_json()) == job
