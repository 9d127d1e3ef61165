"""Which sample has which modality, and dropping some of them while training:
one rule for the fusion classifier and the autoencoders (``multimodal``,
``latent``)."""

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def presence_mask(modalities: Sequence[str], inputs: Mapping[str, torch.Tensor],
                  present: Mapping[str, torch.Tensor] | None, n: int,
                  device: torch.device) -> torch.Tensor:
    """(n, len(modalities)) bool: which sample has which modality — none of a
    modality missing from ``inputs``, all of one without a ``present`` mask."""
    cols = []
    for m in modalities:
        if m not in inputs:
            cols.append(torch.zeros(n, dtype=torch.bool, device=device))
        elif present is not None and m in present:
            cols.append(present[m].to(device=device, dtype=torch.bool))
        else:
            cols.append(torch.ones(n, dtype=torch.bool, device=device))
    return torch.stack(cols, dim=1)


def drop_modalities(present: torch.Tensor, rate: float) -> torch.Tensor:
    """Drop each present modality with probability ``rate``; a sample that would
    lose all of them keeps one, chosen at random."""
    draws = torch.rand(present.shape, device=present.device)
    kept = present & (draws >= rate)
    lost_all = present.any(dim=1) & ~kept.any(dim=1)
    # the present modality with the largest draw survives (one per row)
    pick = torch.where(present, draws, torch.full_like(draws, -1.0)).argmax(dim=1)
    rescue = torch.zeros_like(present).scatter_(1, pick[:, None], True)
    return torch.where(lost_all[:, None], rescue & present, kept)


class ModalityInputs:
    """What a model of one encoder per modality (``encoders``, in order) knows
    about its inputs: its modalities, the batch size, who has what, and the
    modality dropout it trains with. Mixed into ``nn.Module`` models."""

    encoders: nn.ModuleDict
    modality_dropout: float

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def batch_of(self, inputs: Mapping[str, torch.Tensor]) -> tuple[int, torch.device]:
        """The batch size and device of ``inputs`` (any of the model's modalities)."""
        given = [x for m, x in inputs.items() if m in self.encoders]
        if not given:
            raise ValueError(f"inputs have none of the model's modalities {self.modalities}")
        return given[0].shape[0], given[0].device

    def presence(self, inputs: Mapping[str, torch.Tensor],
                 present: Mapping[str, torch.Tensor] | None, n: int,
                 device: torch.device) -> torch.Tensor:
        return presence_mask(self.modalities, inputs, present, n, device)

    def drop_modalities(self, present: torch.Tensor) -> torch.Tensor:
        return drop_modalities(present, self.modality_dropout)
