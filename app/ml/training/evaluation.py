"""Evaluating a classifier over a whole split: logits, the task's metrics, and
robustness to missing modalities and input noise.

Everything stays on the device (0-d tensors); the caller reads the values
once, so an epoch's validation costs one host sync.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from app.ml.tasks import CLASSIFICATION, Task, get_task
from app.ml.training.batches import gather, noisy, rows_to

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
Normalize = Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable]


class Split(NamedTuple):
    """One split's rows, as the model reads them: a tensor (image models) or a
    mapping of modality to tensor (multimodal), with their normalisation."""
    inputs: Inputs
    labels: torch.Tensor
    normalize: Normalize
    present: dict[str, torch.Tensor]


@torch.inference_mode()
def predict(model: torch.nn.Module, images: Inputs, normalize: Normalize,
            device: torch.device, batch_size: int, amp: torch.dtype | None, *,
            present: Mapping[str, torch.Tensor] | None = None, absent: tuple[str, ...] = (),
            noise: float = 0.0, generator: torch.Generator | None = None,
            codes: Mapping[str, list[int]] | None = None) -> torch.Tensor:
    """Float32 logits over a whole split, on ``device`` (no host sync).

    ``images`` is the image tensor (an image model) or a mapping of modality to
    tensor (a multimodal model, with ``normalize`` a mapping too). ``present``
    maps a modality to the split's (N,) presence mask; ``absent`` marks
    modalities missing for every sample; ``noise`` adds Gaussian noise of that
    standard deviation to the normalised float inputs (not to ``codes``, the
    category-code columns per modality).
    """
    model.eval()
    logits = []
    multimodal = isinstance(images, Mapping)
    total = next(iter(images.values())).shape[0] if multimodal else images.shape[0]
    for start in range(0, total, batch_size):
        rows = slice(start, start + batch_size)
        if multimodal:
            x, masks = gather(images, normalize, rows, device, present)  # type: ignore[arg-type]
            if noise > 0:
                x = noisy(x, noise, generator, codes or {})
            n = next(iter(x.values())).shape[0]
            masks.update({m: torch.zeros(n, dtype=torch.bool, device=device) for m in absent})
        else:
            x = normalize(rows_to(images, rows, device))  # type: ignore[operator]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x, None, masks) if multimodal else model(x)
            logits.append(out.float())
    return torch.cat(logits)


def evaluate(model: torch.nn.Module, images: Inputs, labels: torch.Tensor,
             normalize: Normalize, device: torch.device, batch_size: int,
             amp: torch.dtype | None, *, task: str | Task = CLASSIFICATION,
             present: Mapping[str, torch.Tensor] | None = None, absent: tuple[str, ...] = (),
             noise: float = 0.0, generator: torch.Generator | None = None,
             codes: Mapping[str, list[int]] | None = None,
             report: list[str] | None = None) -> dict[str, Any]:
    """The task's metrics over a whole split, as device tensors (see ``predict``
    for the arguments). With ``report`` (the class names), the result also holds
    ``"report"``: the split's per-class scores (this one syncs with the host)."""
    task = get_task(task)
    logits = predict(model, images, normalize, device, batch_size, amp, present=present,
                     absent=absent, noise=noise, generator=generator, codes=codes)
    labels = labels.to(device)
    metrics: dict[str, Any] = task.metrics(logits, labels)
    if report is not None:
        metrics["report"] = task.report(logits, labels, report)
    return metrics


def robustness(model: torch.nn.Module, test: Split, modalities: list[str],
               device: torch.device, batch_size: int, amp: torch.dtype | None, task: Task,
               codes: Mapping[str, list[int]], seed: int) -> dict[str, float]:
    """The task's headline metric (accuracy; mAP for multi-label) on the test
    split with each modality missing for every sample (``test_<h>_without_<m>``)
    and with Gaussian noise of 0.1 train-std on the float inputs
    (``test_<h>_noise``); samples keep their own missing modalities throughout."""
    h = task.headline

    def headline(**kw: Any) -> torch.Tensor:
        return evaluate(model, test.inputs, test.labels, test.normalize, device,
                        batch_size, amp, task=task, present=test.present, codes=codes,
                        **kw)[h]

    out = {f"test_{h}_without_{m}": headline(absent=(m,)) for m in modalities}
    noise_gen = torch.Generator(device=device).manual_seed(seed + 3)
    # inputs are standardised with train statistics, so 0.1 here is 0.1 · std
    out[f"test_{h}_noise"] = headline(noise=0.1, generator=noise_gen)
    return {k: v.item() for k, v in out.items()}
