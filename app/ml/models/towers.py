"""Two-tower (dual) encoders for CLIP-style contrastive retrieval."""

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from app.ml.models.multimodal import build_encoder
from app.ml.models.spec import ModelSpec

# CLIP (Radford et al. 2021): τ starts at 0.07 and 1/τ is capped at 100 so the
# logits cannot grow without bound while the loss keeps rewarding sharper ones.
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


class DualEncoder(nn.Module):
    """One encoder per modality (query and target), each projecting to a shared
    width, L2-normalised; a learnable logit scale 1/τ.

    ``forward(inputs)`` takes a mapping with both modalities and returns the
    (N, dim) float32 unit embeddings of the query and the target.
    """

    def __init__(self, query: str, target: str, query_encoder: nn.Module,
                 target_encoder: nn.Module) -> None:
        super().__init__()
        if query == target:
            raise ValueError("query and target must be different modalities")
        self.query, self.target = query, target
        self.encoders = nn.ModuleDict({query: query_encoder, target: target_encoder})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INIT_TEMPERATURE)))

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoders[modality](x).float(), dim=-1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(self.query, inputs[self.query]), self.embed(self.target,
                                                                      inputs[self.target])

    def scale(self) -> torch.Tensor:
        """1/τ, within [1, MAX_LOGIT_SCALE]."""
        return self.logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()

    @torch.no_grad()
    def clamp_scale_(self) -> None:
        """Keep the parameter itself in range after an optimiser step (as open_clip
        does), so it never drifts where the clamp in ``scale`` passes no gradient."""
        self.logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))


def build_dual_encoder(spec: ModelSpec, query: str, target: str,
                       shapes: Mapping[str, tuple[int, ...]], kinds: Mapping[str, str],
                       vocab_sizes: Mapping[str, int] | None = None,
                       categorical: Mapping[str, Mapping[int, int]] | None = None,
                       ) -> DualEncoder:
    """A DualEncoder whose towers are the multimodal model's encoders for the two
    modalities' kinds and per-sample shapes, sized by ``spec`` (dim, width, depth,
    image/text encoder, text_dim, heads, layers, dropout; the fusion fields are
    unused). ``vocab_sizes`` and ``categorical`` (a tabular modality's {column:
    number of codes}) are as for ``build_model``."""
    towers = {m: build_encoder(spec, m, kinds[m], tuple(shapes[m]), (vocab_sizes or {}).get(m),
                               (categorical or {}).get(m))
              for m in (query, target)}
    return DualEncoder(query, target, towers[query], towers[target])
