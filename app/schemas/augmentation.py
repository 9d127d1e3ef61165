"""The augmentation spec users post, for experiments and previews."""

from typing import Literal

from pydantic import Field, model_validator

from app.ml.mixing import MixSpec
from app.schemas.common import StrictModel


class AugmentationSpec(StrictModel):
    method: Literal["none", "mixup", "cutmix"] = Field(
        "mixup", description="Mixing method: none, mixup (Zhang et al. 2018) or "
                             "cutmix (Yun et al. 2019).")
    alpha: float = Field(1.0, gt=0, le=100, description="Beta(α, α) concentration for λ.")
    lam_mode: Literal["batch", "sample"] = Field(
        "batch", description="One λ per batch (timm's default) or one per sample.")
    prob: float = Field(1.0, ge=0, le=1, description="Share of batches (or samples) mixed.")
    cutmix_minmax: tuple[float, float] | None = Field(
        None, description="CutMix box side ratio range; overrides the λ-derived box size.")
    correct_lam: bool = Field(True, description="CutMix: λ = exact share of pixels kept.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_minmax(self) -> "AugmentationSpec":
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if not 0 < lo <= hi <= 1:
                raise ValueError("cutmix_minmax must satisfy 0 < min <= max <= 1")
        return self

    def to_mix_spec(self) -> MixSpec:
        return MixSpec(**self.model_dump(include=set(AugmentationSpec.model_fields)))
