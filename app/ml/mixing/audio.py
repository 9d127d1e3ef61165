"""Audio ops. Waveforms (N, L) are interpolated by ``mixup``; these cut regions
of spectrograms (N, F, T) or (N, C, F, T), frequency then time on the last two dims."""

import torch

from app.ml.mixing.ops import OpContext, OpResult, box_mask, region_kept, shared_boxes


def _check(x: torch.Tensor, name: str) -> tuple[int, int]:
    if x.dim() < 3:
        raise ValueError(f"{name} needs a spectrogram (N, F, T) or (N, C, F, T), "
                         f"got {tuple(x.shape)}")
    return int(x.shape[-2]), int(x.shape[-1])


def spec_cutmix(x: torch.Tensor, ctx: OpContext) -> OpResult:
    """One time–frequency rectangle from the partner (CutMix on the spectrogram);
    λ = exact share of cells kept. Regions are (f0, t0, f1, t1)."""
    freq, time = _check(x, "spec_cutmix")
    boxes = shared_boxes(ctx, "spec_cutmix", freq, time)
    value = torch.where(box_mask(boxes, freq, time, x.dim()), x[ctx.index], x)
    return OpResult(value, kept=region_kept(boxes, freq, time), region=boxes)


def _band(lam: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(start, end) of a band of floor(size·(1-sqrt λ)) cells at a uniform start."""
    width = (size * (1.0 - torch.sqrt(lam))).floor().long().clamp(0, size)
    start = (torch.rand(lam.shape[0], generator=generator, device=lam.device)
             * (size - width + 1).float()).long()
    return torch.stack([start, start + width], dim=1)


def specmix(x: torch.Tensor, ctx: OpContext) -> OpResult:
    """SpecMix (Kim et al., Interspeech 2021), one band each way: a frequency band
    and a time band come from the partner. Band widths are set so the kept cells
    ((F - f)(T - t)) are a share ≈ λ; λ reported is the exact share kept.
    Regions are (f0, f1, t0, t1)."""
    freq, time = _check(x, "specmix")
    f_band = _band(ctx.lam, freq, ctx.generator)
    t_band = _band(ctx.lam, time, ctx.generator)
    fs = torch.arange(freq, device=x.device)
    ts = torch.arange(time, device=x.device)
    in_f = (fs >= f_band[:, :1]) & (fs < f_band[:, 1:])
    in_t = (ts >= t_band[:, :1]) & (ts < t_band[:, 1:])
    mask = in_f[:, :, None] | in_t[:, None, :]
    kept = 1.0 - mask.flatten(1).float().mean(dim=1)
    mask = mask.view(mask.shape[0], *([1] * (x.dim() - 3)), freq, time)
    return OpResult(torch.where(mask, x[ctx.index], x), kept=kept,
                    region=torch.cat([f_band, t_band], dim=1))
