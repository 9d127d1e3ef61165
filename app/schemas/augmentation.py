"""The augmentation spec users post, for experiments and previews."""

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from app.ml.mixing import MixSpec
from app.schemas.common import StrictModel

MethodName = Literal["none", "mixup", "cutmix", "mixup_cutmix", "cross_modal",
                     "manifold_mixup", "mixgen", "m3mix", "latent_mixup"]
OpName = Literal["mixup", "cutmix", "embedding_mixup", "token_cutmix", "concat", "specmix",
                 "spec_cutmix"]
ModalityName = Annotated[str, Field(min_length=1, max_length=64)]


class AugmentationSpec(StrictModel):
    method: MethodName = Field(
        "mixup", description=(
            "none; mixup (Zhang et al. 2018); cutmix (Yun et al. 2019); mixup_cutmix "
            "(switch per batch or sample, the timm/DeiT recipe); cross_modal (one partner "
            "and one λ for every modality, ops per modality); manifold_mixup (Verma et al. "
            "2019, hidden layers); mixgen (Hao et al. 2022, image + text); m3mix (m³-mix, "
            "Oh, So et al. 2023: geodesic mixing of a retrieval model's normalised "
            "embeddings as hard negatives; task retrieval only); latent_mixup (a "
            "multimodal_ae / multimodal_vae model interpolates its shared latent, one λ and "
            "partner per sample, the targets mixed alike)."))
    alpha: float = Field(1.0, gt=0, le=100, description=(
        "Beta(α, α) concentration for λ. 1 draws λ uniformly; with noisy training "
        "labels larger α (8 at 20 % noise, 16–32 at 40–60 %) holds accuracy up "
        "(benchmarks/quality.py)."))
    cutmix_alpha: float | None = Field(
        None, gt=0, le=100, description="mixup_cutmix: α when cutmix is picked (default α).")
    switch_prob: float = Field(0.5, ge=0, le=1, description="mixup_cutmix: chance of cutmix.")
    lam_mode: Literal["batch", "sample", "pair"] = Field(
        "batch", description="One λ per batch (timm's default), per sample, or per pair.")
    pairing: Literal["permute", "flip", "roll"] = Field(
        "permute", description="Partner: permute, a random derangement (each sample mixed with "
                               "the next in a random cyclic order, never with itself; with "
                               "lam_mode pair, a random matching); flip, the mirror (N-1-i); "
                               "roll, the next (i+1).")
    prob: float = Field(1.0, ge=0, le=1, description="Share of batches (or samples) mixed.")
    off_epoch: int = Field(0, ge=0, le=10_000, description="No mixing in the last N epochs.")
    cutmix_minmax: tuple[float, float] | None = Field(
        None, description="CutMix box side ratio range; overrides the λ-derived box size.")
    correct_lam: bool = Field(True, description="CutMix: λ = exact share of pixels kept.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ops: dict[ModalityName, OpName] = Field(
        default_factory=dict, max_length=16,
        description="Per-modality op, e.g. {\"image\": \"cutmix\", \"text\": "
                    "\"embedding_mixup\", \"audio\": \"specmix\"}.")
    modalities: list[ModalityName] | None = Field(
        None, min_length=1, max_length=16, description="Mix only these modalities.")
    manifold_layers: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, max_length=16,
        description="manifold_mixup: layers to draw from (0 = input, i = after block i).")
    mixgen_lam: float = Field(0.5, gt=0, lt=1, description="mixgen: the fixed image weight.")

    @field_validator("pairing")
    @classmethod
    def _pairing_fits_lam_mode(cls, pairing: str, info: ValidationInfo) -> str:
        if info.data.get("lam_mode") == "pair" and pairing == "roll":
            raise ValueError("lam_mode 'pair' needs pairing 'permute' or 'flip'")
        return pairing

    @field_validator("ops")
    @classmethod
    def _ops_need_cross_modal(cls, ops: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if ops and info.data.get("method") != "cross_modal":
            raise ValueError("per-modality ops apply to method 'cross_modal' only")
        return ops

    @field_validator("cutmix_minmax")
    @classmethod
    def _minmax_in_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1] <= 1:
            raise ValueError("must satisfy 0 < min <= max <= 1")
        return value

    @field_validator("manifold_layers")
    @classmethod
    def _layers_in_range(cls, value: list[int]) -> list[int]:
        if any(not 0 <= layer <= 64 for layer in value):
            raise ValueError("layers must be between 0 and 64")
        return value

    @field_validator("modalities")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("modalities must not repeat")
        return value

    def to_mix_spec(self) -> MixSpec:
        fields = self.model_dump(include=set(AugmentationSpec.model_fields))
        fields["modalities"] = tuple(self.modalities) if self.modalities else None
        fields["manifold_layers"] = tuple(self.manifold_layers)
        return MixSpec(**fields)
