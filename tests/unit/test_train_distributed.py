"""Data-parallel training (app.ml.training.distributed) on CPU with gloo: ranks are
processes spawned by ``launch_local`` (followers in ``tests.unit.ddp_ranks``), or
two "hosts" started as separate processes meeting at one TCPStore."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.ml.data import PreparedDataset, load_digits
from app.ml.resume import ResumePoint
from app.ml.resume import to_bytes as resume_bytes
from app.ml.training import TrainHooks, TrainSpec, train
from app.ml.training.clock import StepPlan
from app.ml.training.distributed import Ranks, rank_seed
from app.ml.training.launch import RankFailed, launch_local
from app.ml.training.loop import make_generators
from tests.unit import ddp_ranks
from tests.unit.ddp_ranks import MIXING, MODEL, Counter

CPU = torch.device("cpu")
TIMEOUT_S = 120.0
EPOCHS = 6


def spec(world_size: int, epochs: int = EPOCHS) -> TrainSpec:
    return ddp_ranks.recipe(world_size, epochs)


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return load_digits()


class Points(Counter):
    """Counts hook calls and keeps the resume point of one epoch."""

    wants_resume_points = True

    def __init__(self, keep_epoch: int) -> None:
        super().__init__()
        self.keep_epoch = keep_epoch
        self.point: ResumePoint | None = None
        self.epochs: list[tuple[int, dict[str, float]]] = []
        self.devices: list[str] = []

    def on_start(self, device: str, total_steps: int) -> None:
        super().on_start(device, total_steps)
        self.devices.append(device)

    def on_epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        super().on_epoch_end(epoch, step, metrics)
        self.epochs.append((epoch, dict(metrics)))

    def on_checkpoint(self, epoch: int, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str], resume: ResumePoint | None = None) -> None:
        super().on_checkpoint()
        if epoch == self.keep_epoch:
            self.point = resume


def two_ranks(data: PreparedDataset, hooks: TrainHooks, folder: Path,
              resume: ResumePoint | None = None):  # type: ignore[no-untyped-def]
    def lead(ranks: Ranks):  # type: ignore[no-untyped-def]
        return train(data, MODEL, MIXING, spec(2), hooks, resume=resume, ranks=ranks)

    path = None
    if resume is not None:
        path = folder / "resume.safetensors"
        path.write_bytes(resume_bytes(resume))
    return launch_local(lead, ddp_ranks.follow_digits, (EPOCHS, str(path) if path else None),
                        2, CPU, TIMEOUT_S)


# --- without a process group -------------------------------------------------------

def test_each_rank_mixes_with_its_own_streams_and_shares_the_order():
    assert [rank_seed(7, 1, 0), rank_seed(7, 2, 0)] == [8, 9]  # rank 0: a solo run's seeds
    seeds = {rank_seed(7, 1, r) for r in range(1, 8)} | {rank_seed(8, 1, 1), rank_seed(7, 2, 1)}
    assert len(seeds) == 9 and all(0 <= s < 2**63 for s in seeds)
    streams = [make_generators(7, CPU, CPU, rank) for rank in range(3)]
    draws = [{name: torch.rand(4, generator=g).tolist() for name, g in s.items()}
             for s in streams]
    assert draws[0]["order"] == draws[1]["order"] == draws[2]["order"]
    for name in ("mix", "host", "augment"):
        assert len({tuple(d[name]) for d in draws}) == 3, name
    assert draws[0]["mix"] == torch.rand(4, generator=torch.Generator().manual_seed(8)).tolist()


def test_a_global_batch_splits_into_shares_whose_weighted_losses_average_to_its_mean():
    rows, losses = torch.arange(7), torch.tensor([1.0, 2, 3, 4, 5, 6, 7])
    parts = [Ranks(r, 2).shard(rows) for r in range(2)]
    assert [p.tolist() for p in parts] == [[0, 2, 4, 6], [1, 3, 5]]
    # DDP averages the ranks' gradients, so it averages these weighted local means
    weighted = [Ranks(r, 2).for_backward(losses[p].mean(), len(p), 7) for r, p in enumerate(parts)]
    assert torch.stack(weighted).mean().item() == pytest.approx(losses.mean().item())
    assert sum(Ranks(r, 2).share(len(p), 7) for r, p in enumerate(parts)) == pytest.approx(1)
    solo, loss = Ranks(), torch.tensor(3.0)
    assert solo.shard(rows) is rows and solo.for_backward(loss, 7, 7) is loss
    assert solo.share(7, 7) == 1.0


def test_the_device_string_says_how_many_processes_on_what():
    assert Ranks(0, 2, CPU, "gloo").describe("cpu (1 thread, fp32)") == \
        "2× cpu (1 thread, fp32, gloo)"
    assert Ranks(0, 4, torch.device("cuda", 0), "nccl").describe(
        "cuda:0 (NVIDIA H200, bf16 autocast)") == "4× cuda (NVIDIA H200, bf16 autocast, nccl)"
    assert Ranks().describe("cpu (2 threads, fp32)") == "cpu (2 threads, fp32)"


def test_a_last_batch_that_leaves_a_rank_under_two_rows_is_dropped():
    assert StepPlan.of(131, 64, 1).steps_per_epoch == 3  # 64 + 64 + 3
    assert StepPlan.of(131, 64, 1, world_size=2).steps_per_epoch == 2  # 3 rows: 2 + 1
    assert StepPlan.of(132, 64, 1, world_size=2).steps_per_epoch == 3  # 4 rows: 2 + 2
    assert StepPlan.of(129, 64, 1).steps_per_epoch == 2  # as before: a batch of one


@pytest.mark.parametrize(("fields", "message"), [
    ({"world_size": 0}, "world_size: must be >= 1"),
    ({"world_size": 4, "batch_size": 6}, "use a batch_size of 8 or more"),
    ({"world_size": 2, "device": "cuda:1"}, "not cuda:1"),
])
def test_a_world_size_the_run_cannot_use_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainSpec(**fields)


def test_train_refuses_a_world_size_its_group_does_not_have(digits):
    with pytest.raises(ValueError, match=r"training\.world_size: 2, but this process"):
        train(digits, MODEL, MIXING, spec(2, epochs=1))


# --- two ranks, spawned ------------------------------------------------------------

def test_the_ranks_agree_on_the_gradient_of_the_global_batch_and_on_reductions():
    def lead(ranks: Ranks) -> dict:
        return ddp_ranks.global_batch_gradient(ranks)

    mine, others = launch_local(lead, ddp_ranks.follow_gradient, (), 2, CPU, TIMEOUT_S)
    theirs = others[1]
    # the same data and weights in one process, the whole batch at once
    torch.manual_seed(0)
    x, y = torch.randn(7, 3), torch.randn(7)
    model = torch.nn.Linear(3, 1)
    loss = ((model(x).squeeze(1) - y) ** 2).mean()
    loss.backward()
    assert mine["weight"] == theirs["weight"] == model.weight.detach().tolist()
    assert mine["grad"] == theirs["grad"]  # all-reduced: the same bits on both ranks
    assert torch.allclose(torch.tensor(mine["grad"]), model.weight.grad, atol=1e-6)
    assert (mine["rows"], theirs["rows"]) == ([0, 2, 4, 6], [1, 3, 5])
    # shares of the mean loss summed over the ranks: the global batch's mean loss
    assert mine["loss_sum"] == theirs["loss_sum"]
    assert mine["loss_sum"][0] == pytest.approx(loss.item(), rel=1e-6)
    assert mine["loss_sum"][1] == 1.0  # 0 + 1
    assert mine["stop"] == theirs["stop"] == [True, False]  # one rank's flag stops all
    assert mine["leader_says"] == theirs["leader_says"] == {"val_acc": 0.5}
    assert mine["first_draw"] != theirs["first_draw"]  # each rank mixes with its own stream


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The same recipe on one process and on two (the global batch of 64 split 32 +
    32), the two-rank run keeping its resume point after epoch 3."""
    torch.set_num_threads(1)
    one = train(digits, MODEL, MIXING, spec(1))
    hooks = Points(keep_epoch=3)
    two, followers = two_ranks(digits, hooks, tmp_path_factory.mktemp("ranks"))
    return one, two, followers, hooks


def test_two_ranks_train_to_the_accuracy_of_one_on_the_same_global_batch(runs):
    one, two, followers, _ = runs
    assert two.status == "completed" and two.steps == one.steps == 6 * 20
    assert one.metrics["test_acc"] > 0.85
    assert abs(two.metrics["test_acc"] - one.metrics["test_acc"]) < 0.04  # within noise
    assert two.device == "2× cpu (1 thread, fp32, gloo)"
    assert followers[1]["status"] == "completed" and followers[1]["steps"] == two.steps
    print(f"test_acc: 1 process {one.metrics['test_acc']:.3f}, "
          f"2 processes {two.metrics['test_acc']:.3f}")


def test_only_rank_0_reports_and_every_rank_sees_its_figures(runs):
    _, two, followers, hooks = runs
    assert followers[1]["hook_calls"] == 0
    assert hooks.calls == 1 + 6 + 6 + 1  # start, epochs, checkpoints, the final one
    assert hooks.devices == ["2× cpu (1 thread, fp32, gloo)"]
    # the follower ends with rank 0's last epoch figures (validated once, on rank 0)
    assert followers[1]["metrics"] == hooks.epochs[-1][1]
    assert not any(k.startswith("test_") for k in followers[1]["metrics"])
    assert "test_acc" in two.metrics


def test_two_ranks_resume_from_rank_0s_point_and_end_as_the_uninterrupted_run(digits, runs,
                                                                             tmp_path):
    _, two, followers, hooks = runs
    assert hooks.point is not None and hooks.point.extra["world_size"] == 2
    assert {"mix@1", "augment@1", "host@1", "order@1", "torch@1"} <= set(hooks.point.generators)
    resumed_hooks = Points(keep_epoch=0)
    resumed, resumed_followers = two_ranks(digits, resumed_hooks, tmp_path, resume=hooks.point)
    assert [e for e, _ in resumed_hooks.epochs] == [4, 5, 6]
    assert resumed_hooks.epochs == hooks.epochs[3:]  # the same figures, to the bit
    assert resumed.metrics == {**two.metrics, "train_time_s": resumed.metrics["train_time_s"]}
    assert resumed_followers[1]["metrics"] == followers[1]["metrics"]


class StopAt(Counter):
    """Rank 0's hooks asking to stop (a cancel, a time limit) after ``steps`` steps."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_progress(self, progress: object) -> None:
        self.seen += 1

    def should_stop(self) -> bool:
        return self.seen >= self.steps


def test_a_stop_rank_0_decides_stops_every_rank_at_the_same_step(digits):
    def lead(ranks: Ranks):  # type: ignore[no-untyped-def]
        return train(digits, MODEL, MIXING, spec(2, epochs=2), StopAt(25), ranks=ranks)

    result, followers = launch_local(lead, ddp_ranks.follow_digits, (2, None), 2, CPU,
                                     TIMEOUT_S)
    assert (result.status, result.steps) == ("stopped", 25)
    assert (followers[1]["status"], followers[1]["steps"]) == ("stopped", 25)


def test_compiled_ranks_each_compile_alone_and_train_as_the_eager_ones(digits, runs,
                                                                      monkeypatch):
    """training.compile with two ranks: each compiles in its probe step before DDP
    wraps the model (dynamo's eager backend here), and the run is the eager one's."""
    from dataclasses import replace

    from app.ml.training import fast

    monkeypatch.setattr(fast, "COMPILE_BACKEND", "eager")
    _, two, followers, _ = runs

    def lead(ranks: Ranks):  # type: ignore[no-untyped-def]
        return train(digits, MODEL, MIXING, replace(spec(2), compile=True), ranks=ranks)

    compiled, others = launch_local(lead, ddp_ranks.follow_compiled, (EPOCHS,), 2, CPU,
                                    TIMEOUT_S)
    assert compiled.device == others[1]["device"] == "2× cpu (1 thread, fp32, compiled, gloo)"
    assert {k: v for k, v in compiled.metrics.items() if k != "train_time_s"} == \
        {k: v for k, v in two.metrics.items() if k != "train_time_s"}
    assert others[1]["metrics"] == followers[1]["metrics"]


def test_a_resume_point_of_another_world_size_is_refused(digits, runs):
    point = runs[3].point
    assert point is not None
    with pytest.raises(ValueError, match="written by 2 process"):
        train(digits, MODEL, MIXING, spec(1), resume=point)


# --- failures: nobody hangs ----------------------------------------------------------

def test_a_follower_killed_mid_run_ends_the_run_with_which_rank_died():
    with pytest.raises(RankFailed) as failed:
        launch_local(ddp_ranks.lead_until_peer_fails, ddp_ranks.follow_and_die, (), 2, CPU,
                     TIMEOUT_S)
    assert failed.value.died and failed.value.rank == 1
    assert "was killed by SIGKILL" in str(failed.value)


def test_a_follower_that_raises_ends_the_run_with_its_error():
    with pytest.raises(RankFailed) as failed:
        launch_local(ddp_ranks.lead_until_peer_fails, ddp_ranks.follow_and_raise, (), 2, CPU,
                     TIMEOUT_S)
    assert not failed.value.died and failed.value.rank == 1
    assert "ValueError: a follower's own error" in str(failed.value)
    assert "Traceback" in failed.value.detail


def test_a_leader_that_raises_ends_its_followers():
    pids: list[int] = []

    def lead(ranks: Ranks) -> None:
        ranks.any(False)
        raise KeyError("the leader's own error")

    with pytest.raises(KeyError, match="the leader's own error"):
        launch_local(lead, ddp_ranks.follow_forever, (), 2, CPU, TIMEOUT_S,
                     on_spawned=pids.extend)
    assert len(pids) == 1
    assert not Path(f"/proc/{pids[0]}").exists() or \
        Path(f"/proc/{pids[0]}/stat").read_text().split()[2] == "Z"


# --- two hosts: two processes, one TCPStore --------------------------------------------

def test_two_hosts_meet_at_one_store_and_train_the_same_model(tmp_path):
    """Host 0 serves the store and writes its address; host 1 joins it. Each is a
    launcher with one local rank; they must end with the same weights."""
    address = tmp_path / "address"
    command = [sys.executable, "-m", "tests.unit.ddp_host", str(address)]
    hosts = [subprocess.Popen([*command, str(rank)], stdout=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [json.loads(h.communicate(timeout=300)[0].strip().splitlines()[-1])
               for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0]
    leader, follower = outputs
    assert leader["checksum"] == follower["checksum"]  # one model, trained together
    assert leader["steps"] == follower["steps"] == 2 * 20
    assert leader["test_acc"] > 0.5 and leader["device"] == "2× cpu (1 thread, fp32, gloo)"
