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
    mask (N, T) of a mixed sample is the union of the pair's masks (an unmixed
    one, λ = 1, keeps its own)."""
    w = lam.to(embeddings.dtype).view(-1, 1, 1)
    mixed = torch.lerp(embeddings[index], embeddings, w)
    return mixed, union_mask(mask.bool(), lam, index)


def union_mask(mask: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return mask | (mask[index] & (lam < 1.0)[:, None])


def embedding_mixup_op(ids: torch.Tensor, ctx: OpContext) -> OpResult:
    """Deferred: ids pass through; the union mask is reported for the model."""
    return OpResult(ids, mask=union_mask(ids != PAD_ID, ctx.lam, ctx.index), deferred=True)


def token_cutmix(ids: torch.Tensor, ctx: OpContext) -> OpResult:
    """Replace a contiguous span of sample A's tokens with a span of its partner's.

    With A's length L_a and B's length L_b, the span has s = min(floor(L_a·(1-λ)),
    L_b) tokens, starts uniformly inside A's content and is filled with s
    consecutive real tokens of B (also from a uniform start), so the result keeps
    A's length, stays left-aligned and has no padding inside. λ reported = the
    share of A's tokens kept, 1 - s / L_a. Regions are (start, end, partner_start):
    A's positions [start, end) hold B's tokens [partner_start, partner_start + s).
    """
    n, width = ids.shape
    partner = ids[ctx.index]
    len_a = lengths(ids)
    len_b = lengths(partner)
    cut = torch.minimum((len_a.float() * (1.0 - ctx.lam)).floor().long(), len_b)
    len_a = len_a.clamp_min(1)  # an empty text stays empty and counts as fully kept
    u = torch.rand((2, n), generator=ctx.generator, device=ids.device)
    start_a = (u[0] * (len_a - cut + 1).float()).long()
    start_b = (u[1] * (len_b - cut + 1).clamp_min(1).float()).long()
    pos = torch.arange(width, device=ids.device)
    inside = (pos >= start_a[:, None]) & (pos < (start_a + cut)[:, None])
    source = (pos - start_a[:, None] + start_b[:, None]).clamp(0, width - 1)
    value = torch.where(inside, partner.gather(1, source), ids)
    kept = 1.0 - cut.float() / len_a.float()
    return OpResult(value, kept=kept,
                    region=torch.stack([start_a, start_a + cut, start_b], dim=1))


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
    value = torch.where((ctx.lam < 1.0)[:, None], value, ids)  # unmixed samples stay
    return OpResult(value, mask=value != PAD_ID)
