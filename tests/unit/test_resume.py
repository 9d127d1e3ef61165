"""Resume points: a round trip restores the optimizer, the generators and the model."""

import torch

from app.ml.resume import ResumePoint, from_bytes, to_bytes


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    x = torch.randn(8, 4, generator=gen)
    loss = model(torch.nn.functional.dropout(x, 0.5)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_a_resumed_optimizer_and_generators_continue_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        _step(model, opt, gen)
    point = ResumePoint(epoch=3, step=3, model=model.state_dict(), optimizer=opt.state_dict(),
                        generators={"data": gen.get_state()}, torch_rng=torch.get_rng_state(),
                        extra={"best_val": 0.5})
    blob = to_bytes(point)

    for _ in range(2):  # the uninterrupted run
        _step(model, opt, gen)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    loaded = from_bytes(blob)
    assert (loaded.epoch, loaded.step, loaded.extra) == (3, 3, {"best_val": 0.5})
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict(loaded.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)  # lr comes back from the point
    opt2.load_state_dict(loaded.optimizer)
    gen2 = torch.Generator().set_state(loaded.generators["data"])
    torch.set_rng_state(loaded.torch_rng)
    for _ in range(2):
        _step(model2, opt2, gen2)
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
    assert opt2.param_groups[0]["lr"] == 1e-2


def test_a_resume_point_is_plain_safetensors():
    from safetensors.torch import load

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    blob = to_bytes(ResumePoint(1, 10, model.state_dict(), opt.state_dict(), {},
                                torch.get_rng_state()))
    names = set(load(blob))
    assert {"model.weight", "model.bias", "rng.torch"} <= names
