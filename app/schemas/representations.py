"""Replies about an autoencoder run's representation."""

import uuid
from typing import Literal

from pydantic import BaseModel, Field

SplitName = Literal["train", "val", "test"]


class EmbeddingsOut(BaseModel):
    run_id: uuid.UUID
    split: SplitName
    n: int = Field(description="Rows in the reply: the split's first `limit`.")
    latent_dim: int
    class_names: list[str]
    indices: list[int] = Field(description="Positions of the rows in the split.")
    labels: list[int] = Field(description="Each row's clean class index (multi-label: its "
                                          "first class).")
    means: list[list[float]] = Field(description="The posterior mean of each row, fused "
                                                 "over the modalities it has (n × latent_dim).")
    pca: list[list[float]] = Field(description="The means projected on their first two "
                                               "principal axes (n × 2).")
    explained_variance: list[float] = Field(description="Share of the means' variance each "
                                                        "of the two axes explains.")
