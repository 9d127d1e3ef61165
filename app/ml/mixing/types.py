"""What a mix is asked to do (``MixSpec``) and what it reports back (``Mixed``)."""

from dataclasses import dataclass, field
from typing import Literal

import torch

LamMode = Literal["batch", "sample", "pair"]
Pairing = Literal["permute", "flip", "roll"]

# Modality kinds the ops know about. A batch's tensors are (N, ...) with:
#   image (N, C, H, W); video (N, T, C, H, W); audio waveform (N, L);
#   audio spectrogram (N, F, T) or (N, C, F, T); text token ids (N, T) with 0 = padding;
#   tabular (N, F).
KINDS = ("image", "video", "audio", "text", "tabular")


@dataclass(frozen=True)
class MixSpec:
    """A mixing recipe. Names follow timm's ``Mixup`` where they overlap.

    method: a registered method (``none``, ``mixup``, ``cutmix``, ``mixup_cutmix``,
        ``cross_modal``, ``manifold_mixup``, ``mixgen``, ``latent_mixup``).
    alpha / cutmix_alpha: Beta concentrations for λ (cutmix_alpha defaults to alpha;
        used when ``mixup_cutmix`` picks cutmix).
    switch_prob: ``mixup_cutmix``: chance of cutmix instead of mixup, per batch
        (``batch`` λ mode) or per sample.
    lam_mode: one λ per batch (timm's default), per sample, or per pair (both
        samples of a pair share λ; pairing must be an involution: permute or flip).
    pairing: partner of sample i: a random permutation, the mirror (N-1-i, timm's
        flip) or the next sample (i+1 mod N).
    prob: share of batches (``batch``) or samples mixed; the rest keep λ = 1.
    off_epoch: mixing stops for this many final epochs (the trainer applies it).
    cutmix_minmax: box side ratio range, drawn uniformly instead of from λ.
    correct_lam: cutmix λ is the exact share of pixels kept.
    label_smoothing: folded into one-hot targets before mixing.
    ops: per-modality op, e.g. {"image": "cutmix", "text": "token_cutmix",
        "audio": "specmix"}; unnamed modalities get their kind's default.
    modalities: mix only these modalities (others stay as sample A); labels still mix.
    manifold_layers: ``manifold_mixup``: hidden layers to draw from (0 = the input).
    mixgen_lam: ``mixgen``: the fixed image interpolation weight.
    """

    method: str = "mixup"
    alpha: float = 1.0
    cutmix_alpha: float | None = None
    switch_prob: float = 0.5
    lam_mode: LamMode = "batch"
    pairing: Pairing = "permute"
    prob: float = 1.0
    off_epoch: int = 0
    cutmix_minmax: tuple[float, float] | None = None
    correct_lam: bool = True
    label_smoothing: float = 0.0
    ops: dict[str, str] = field(default_factory=dict)
    modalities: tuple[str, ...] | None = None
    manifold_layers: tuple[int, ...] = (0, 1, 2)
    mixgen_lam: float = 0.5

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        if self.cutmix_alpha is not None and self.cutmix_alpha <= 0:
            raise ValueError("cutmix_alpha must be > 0")
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.lam_mode not in ("batch", "sample", "pair"):
            raise ValueError("lam_mode must be 'batch', 'sample' or 'pair'")
        if self.pairing not in ("permute", "flip", "roll"):
            raise ValueError("pairing must be 'permute', 'flip' or 'roll'")
        if self.lam_mode == "pair" and self.pairing == "roll":
            raise ValueError("lam_mode 'pair' needs pairing 'permute' or 'flip' (roll does "
                             "not pair samples both ways)")
        if self.off_epoch < 0:
            raise ValueError("off_epoch must be >= 0")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError("cutmix_minmax must satisfy 0 < min <= max <= 1")
        if not 0.0 < self.mixgen_lam < 1.0:
            raise ValueError("mixgen_lam must be in (0, 1)")
        if self.ops and self.method != "cross_modal":
            raise ValueError("ops (per-modality ops) apply to method 'cross_modal' only")
        if not self.manifold_layers or min(self.manifold_layers) < 0:
            raise ValueError("manifold_layers must be non-empty and >= 0")

    def active_at(self, epoch: int, epochs: int) -> bool:
        """False in the last ``off_epoch`` epochs (1-based ``epoch``)."""
        return self.method != "none" and epoch <= epochs - self.off_epoch


@dataclass
class Mixed:
    """The result of one mixing call; every tensor lives on the batch's device.

    For interpolating ops ``inputs[k][i] = lam[i] * batch[k][i] + (1 - lam[i]) *
    batch[k][index[i]]``; region ops (cutmix, token_cutmix, specmix…) copy the
    partner's cells inside ``regions[k]`` and ``lam[i]`` is the share kept.
    ``deferred`` lists modalities the model must mix itself (embedding_mixup on
    token embeddings via ``app.ml.mixing.text.embedding_mixup``); ``layer`` is
    the hidden layer for manifold mixup; ``latent`` asks a model with a shared
    latent to mix it (latent mixup).

    ``ops`` is the op the method planned per modality (its keys are the
    modalities mixed at the input). A method may run that op on some samples
    only (``mixup_cutmix`` cuts some, interpolates the rest): then
    ``op_mask[k]`` is True for the samples that ran ``ops[k]`` and the others
    ran ``fallback_ops[k]``; their region rows (and ``boxes``) are all zero.
    ``sample_ops(k)`` spells that out per sample. Masks stay on the device, so
    reporting costs the training step no sync.
    """

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor
    boxes: torch.Tensor | None = None
    method: str = "none"
    ops: dict[str, str] = field(default_factory=dict)
    regions: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    deferred: tuple[str, ...] = ()
    layer: int | None = None
    latent: bool = False  # latent_mixup: the model interpolates its shared latent
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    op_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    fallback_ops: dict[str, str] = field(default_factory=dict)

    def sample_ops(self, modality: str) -> list[str | None]:
        """The op each sample of ``modality`` ran (None: the modality was not
        mixed). Reads ``op_mask`` back to the host: for previews and tests, not
        for the training step."""
        n = self.lam.shape[0]
        op = self.ops.get(modality)
        mask = self.op_mask.get(modality)
        if op is None or mask is None:
            return [op] * n
        fallback = self.fallback_ops[modality]
        return [op if ran else fallback for ran in mask.tolist()]
