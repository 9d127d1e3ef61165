"""What model to build: ``ModelSpec``, a plain dataclass stored with checkpoints."""

from dataclasses import dataclass

KINDS = ("cnn", "multimodal")
FUSIONS = ("early", "late", "attention", "tensor", "gated")
IMAGE_ENCODERS = ("cnn", "resnet18")
TEXT_ENCODERS = ("mean", "transformer")
VIDEO_ENCODERS = ("mean", "temporal_conv")


@dataclass(frozen=True)
class ModelSpec:
    """``kind`` ``cnn``: the image-only SmallCNN (width, depth, dropout).

    ``multimodal``: one encoder per modality of the dataset and a fusion head.
    ``dim`` is every encoder's output width; ``width``/``depth`` size the image
    (and spectrogram) CNN; ``text_dim``/``heads``/``layers`` the text encoder
    and the attention fusion; ``rank`` the low-rank tensor fusion;
    ``modality_dropout`` drops whole modalities per sample while training.
    """

    kind: str = "cnn"
    width: int = 32
    depth: int = 3
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

    def __post_init__(self) -> None:
        checks = {"kind": KINDS, "fusion": FUSIONS, "image_encoder": IMAGE_ENCODERS,
                  "text_encoder": TEXT_ENCODERS, "video_encoder": VIDEO_ENCODERS}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, name)!r}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError("modality_dropout must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        for name in ("width", "depth", "dim", "text_dim", "heads", "layers", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.kind == "multimodal":
            if self.dim % self.heads and self.fusion == "attention":
                raise ValueError("dim must be a multiple of heads for attention fusion")
            if self.text_dim % self.heads and self.text_encoder == "transformer":
                raise ValueError("text_dim must be a multiple of heads for the text transformer")
