"""Text ops on padded token ids (N, T), 0 = padding, tokens left-aligned.

``embedding_mixup`` needs the model's token embeddings, so the op only marks
the modality as deferred and the model calls ``embedding_mixup`` after its
embedding layer with the call's λ and partner index.
"""

import torch

from app.ml.mixing.ops import OpContext, OpResult

PAD_ID = 0


def lengths(ids: torch.Tensor) -> torch.Tensor:
    """Number of non-padding tokens per row."""
    return (ids != PAD_ID).sum(dim=1)


def embedding_mixup(embeddings: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor,
                    index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate token embeddings (N, T, D) of each padded pair; the attention
    mask (N, T) of the result is the union of the pair's masks."""
    w = lam.to(embeddings.dtype).view(-1, 1, 1)
    mixed = torch.lerp(embeddings[index], embeddings, w)
    return mixed, mask.bool() | mask.bool()[index]


def embedding_mixup_op(ids: torch.Tensor, ctx: OpContext) -> OpResult:
    """Deferred: ids pass through; the union mask is reported for the model."""
    mask = ids != PAD_ID
    return OpResult(ids, mask=mask | mask[ctx.index], deferred=True)


def token_cutmix(ids: torch.Tensor, ctx: OpContext) -> OpResult:
    """Replace one contiguous span with the partner's tokens at the same positions.

    The span is cut from the pair's content length L = max(len_a, len_b): its
    length is floor(L·(1-λ)), its start uniform; λ reported = share of the L
    positions kept from sample A. Spans are (start, end), half-open.
    """
    n, width = ids.shape
    partner = ids[ctx.index]
    length = torch.maximum(lengths(ids), lengths(partner)).clamp_min(1)
    cut = (length.float() * (1.0 - ctx.lam)).floor().long()
    start = (torch.rand(n, generator=ctx.generator, device=ids.device)
             * (length - cut + 1).float()).long()
    end = start + cut
    pos = torch.arange(width, device=ids.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    kept = 1.0 - cut.float() / length.float()
    return OpResult(torch.where(inside, partner, ids), kept=kept,
                    region=torch.stack([start, end], dim=1))


def concat_text(ids: torch.Tensor, ctx: OpContext) -> OpResult:
    """MixGen's text side: sample A's tokens followed by its partner's, truncated
    to the padded width. Built from the originals, so no sample is mixed twice."""
    width = ids.shape[1]
    partner = ids[ctx.index]
    own = lengths(ids)
    pos = torch.arange(width, device=ids.device).expand(ids.shape[0], width)
    from_partner = (pos - own[:, None]).clamp(0, width - 1)
    tail = partner.gather(1, from_partner)
    value = torch.where(pos < own[:, None], ids, tail)
    return OpResult(value, mask=value != PAD_ID)
