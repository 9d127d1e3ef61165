"""What model to build: ``ModelSpec``, a plain dataclass stored with checkpoints."""

from dataclasses import dataclass, field

# image classifiers (``IMAGE_KINDS``) and the multimodal model
IMAGE_KINDS = ("cnn", "preact_resnet18", "wide_resnet", "torchvision", "timm")
# multimodal models with a shared latent and a decoder per modality (app.ml.models.latent)
LATENT_KINDS = ("multimodal_ae", "multimodal_vae")
MULTIMODAL_KINDS = ("multimodal", *LATENT_KINDS)
KINDS = (*IMAGE_KINDS, *MULTIMODAL_KINDS)
FUSIONS = ("early", "late", "attention", "tensor", "gated")
# the multimodal image tower: any image kind; ``resnet18`` is the value stored
# before the others existed (torchvision's resnet18 with its ImageNet stem)
IMAGE_ENCODERS = (*IMAGE_KINDS, "resnet18")
TEXT_ENCODERS = ("mean", "transformer")
VIDEO_ENCODERS = ("mean", "temporal_conv")
# kinds (or image towers) whose architecture comes from ``name``
NAMED_KINDS = ("torchvision", "timm")


class ModelSpecError(ValueError):
    """A spec field that cannot be built, with the field's name, so the API can
    point its 422 at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def image_family(kind: str, image_encoder: str) -> str:
    """The image network a spec builds: the kind itself, or the multimodal image tower."""
    return image_encoder if kind in MULTIMODAL_KINDS else kind


def wide_resnet_blocks(depth: int) -> int:
    """Blocks per group of WRN-``depth``: depth = 6n + 4 (Zagoruyko & Komodakis)."""
    if depth < 10 or (depth - 4) % 6:
        raise ModelSpecError("depth", f"depth must be 6n+4 (10, 16, 22, 28, 34, 40…) for "
                                      f"wide_resnet, not {depth}")
    return (depth - 4) // 6


def default_width(kind: str, image_encoder: str = "cnn") -> int:
    """``width`` when a spec leaves it out: 64 for PreAct ResNet-18 (the paper's), 16
    for the image-only SmallCNN (on small images a wider one memorises noisy labels
    through mixup; docs/training.md "Why these defaults"), 32 for the multimodal towers."""
    family = image_family(kind, image_encoder)
    if family == "preact_resnet18":
        return 64
    return 16 if kind == "cnn" else 32


def default_depth(kind: str, image_encoder: str = "cnn") -> int:
    """``depth`` when a spec leaves it out: WRN-28, else 3 conv blocks."""
    return 28 if image_family(kind, image_encoder) == "wide_resnet" else 3


@dataclass(frozen=True)
class ModelSpec:
    """``kind`` ``cnn``: the image-only SmallCNN (width, depth, dropout).
    ``preact_resnet18``: the mixup paper's CIFAR PreAct ResNet-18, stage widths
    width·(1, 2, 4, 8) (width 64 by default, the paper's), dropout before the head.
    ``wide_resnet``: WRN-depth-widen (depth = 6n+4, dropout inside the blocks).
    ``torchvision`` / ``timm``: the library's model ``name``, randomly initialised.

    ``multimodal``: one encoder per modality of the dataset and a fusion head.
    ``dim`` is every encoder's output width; ``image_encoder`` is any image kind
    (its fields as above; ``width``/``depth`` size the spectrogram CNN too, but for
    a wide_resnet tower ``depth`` is the WRN's and that CNN keeps 3 blocks);
    ``text_dim``/``heads``/``layers`` the text encoder and the attention fusion;
    ``rank`` the low-rank tensor fusion; ``modality_dropout`` drops whole
    modalities per sample while training.

    ``multimodal_ae`` / ``multimodal_vae``: the multimodal encoders, a shared
    latent of ``latent_dim``, a decoder per modality and a linear head on the
    latent; the loss weighs each modality's reconstruction by ``recon_weights``
    (default 1 each), the VAE's KL by ``beta`` and the head's loss by
    ``classifier_weight`` (0: unsupervised).

    ``width`` and ``depth`` left as None take the kind's default
    (``default_width``, ``default_depth``), so a stored spec always holds numbers.
    """

    kind: str = "cnn"
    width: int | None = None
    depth: int | None = None
    dropout: float = 0.0
    fusion: str = "early"
    dim: int = 64
    image_encoder: str = "cnn"
    text_encoder: str = "mean"
    video_encoder: str = "mean"
    text_dim: int = 64
    heads: int = 4
    layers: int = 1
    modality_dropout: float = 0.0
    rank: int = 4
    name: str | None = None
    widen: int = 10
    latent_dim: int = 16
    beta: float = 1.0
    recon_weights: dict[str, float] = field(default_factory=dict)
    classifier_weight: float = 1.0

    def __post_init__(self) -> None:
        checks = {"kind": KINDS, "fusion": FUSIONS, "image_encoder": IMAGE_ENCODERS,
                  "text_encoder": TEXT_ENCODERS, "video_encoder": VIDEO_ENCODERS}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ModelSpecError(name, f"{name} must be one of {', '.join(allowed)}, "
                                           f"not {getattr(self, name)!r}")
        family = image_family(self.kind, self.image_encoder)
        # frozen: the defaults are resolved once, here
        if self.width is None:
            object.__setattr__(self, "width", default_width(self.kind, self.image_encoder))
        if self.depth is None:
            object.__setattr__(self, "depth", default_depth(self.kind, self.image_encoder))
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ModelSpecError("modality_dropout", "modality_dropout must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelSpecError("dropout", "dropout must be in [0, 1)")
        for name in ("width", "depth", "dim", "text_dim", "heads", "layers", "rank", "widen"):
            if getattr(self, name) < 1:
                raise ModelSpecError(name, f"{name} must be >= 1")
        if family in NAMED_KINDS and not self.name:
            field = "kind" if self.kind == family else "image_encoder"
            raise ModelSpecError("name", f"name is required for {field} {family!r}: a "
                                         f"{family} model name such as 'resnet18'")
        if family not in NAMED_KINDS and self.name is not None:
            raise ModelSpecError("name", f"name is only used by the torchvision and timm "
                                         f"models, not by {family!r}")
        if family == "wide_resnet":
            wide_resnet_blocks(self.depth)  # type: ignore[arg-type]
        if self.latent_dim < 1:
            raise ModelSpecError("latent_dim", "latent_dim must be >= 1")
        for name in ("beta", "classifier_weight"):
            if getattr(self, name) < 0:
                raise ModelSpecError(name, f"{name} must be >= 0")
        for m, w in self.recon_weights.items():
            if w < 0:
                raise ModelSpecError(f"recon_weights.{m}", "weights must be >= 0")
        if self.kind in MULTIMODAL_KINDS:
            if self.dim % self.heads and self.fusion == "attention":
                raise ModelSpecError("dim", "dim must be a multiple of heads for attention "
                                            "fusion")
            if self.text_dim % self.heads and self.text_encoder == "transformer":
                raise ModelSpecError("text_dim", "text_dim must be a multiple of heads for "
                                                 "the text transformer")
