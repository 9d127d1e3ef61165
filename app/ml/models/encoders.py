"""One encoder per modality kind, each mapping its batch to (N, dim) features.

Inputs follow the mixing library's layout (``app.ml.mixing.types``): image
(N, C, H, W); video (N, T, C, H, W); audio waveform (N, L) or spectrogram
(N, F, T) / (N, C, F, T); text ids (N, T) with 0 = padding; tabular (N, D).
"""


import torch
from torch import nn

from app.ml.mixing import Mixed, embedding_mixup
from app.ml.mixing.ops import interpolate
from app.ml.mixing.text import PAD_ID
from app.ml.models.cnn import conv_blocks
from app.ml.models.image_models import build_image_model
from app.ml.models.spec import IMAGE_ENCODERS, IMAGE_KINDS, ModelSpecError
from app.ml.models.vision_libs import MissingPackage, import_torchvision
from app.ml.models.vision_libs import torchvision_available as torchvision_available


class ConvEncoder(nn.Module):
    """SmallCNN's conv-BN-ReLU blocks (channels width, 2·width, 4·width, 8·width…,
    a 2x2 max pool while the map is at least 2 wide), global average pooling and
    a linear projection to ``dim``."""

    def __init__(self, in_channels: int, dim: int, width: int = 32, depth: int = 3,
                 min_side: int = 8) -> None:
        super().__init__()
        blocks, channels = conv_blocks(in_channels, width, depth, min_side)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.blocks(x)))


class ImageEncoder(nn.Module):
    """Images (N, C, H, W) → (N, dim) by ``backbone``: ``cnn`` (ConvEncoder),
    ``preact_resnet18`` / ``wide_resnet`` / ``torchvision`` / ``timm`` (the image
    classifier of that kind with ``dim`` outputs, ``app.ml.models.image_models``;
    ``name`` picks the torchvision/timm model), or ``resnet18``: the tower stored
    before those existed, torchvision's resnet18 with its ImageNet stem (kept as
    it was so its checkpoints load). ``width``/``depth`` None take the backbone's
    default (as ``ModelSpec``). Never downloads weights."""

    def __init__(self, in_channels: int, dim: int, image_size: tuple[int, int] = (32, 32),
                 backbone: str = "cnn", width: int | None = None, depth: int | None = None,
                 name: str | None = None, widen: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if backbone == "cnn":
            self.net: nn.Module = ConvEncoder(in_channels, dim, width or 32, depth or 3,
                                              min(image_size))
        elif backbone == "resnet18":
            try:
                tv = import_torchvision()
            except MissingPackage as exc:
                raise ModelSpecError("image_encoder", f"image_encoder 'resnet18' needs "
                                                      f"torchvision: {exc}") from exc
            net = tv.models.resnet18(weights=None, num_classes=dim)
            if in_channels != 3:
                net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.net = net
        elif backbone in IMAGE_KINDS:
            self.net = build_image_model(backbone, in_channels, dim, image_size, width=width,
                                         depth=depth, widen=widen, dropout=dropout, name=name,
                                         field="image_encoder")
        else:
            raise ModelSpecError("image_encoder", f"image_encoder must be one of "
                                                  f"{', '.join(IMAGE_ENCODERS)}, not "
                                                  f"{backbone!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VideoEncoder(nn.Module):
    """Clips (N, T, C, H, W) → (N, dim): a per-frame ImageEncoder, then the mean
    over frames (``mean``) or a small temporal convolution and max pooling over
    time (``temporal_conv``)."""

    def __init__(self, frame_encoder: ImageEncoder, dim: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "temporal_conv"):
            raise ValueError(f"unknown video pooling {pooling!r}")
        self.frames = frame_encoder
        self.pooling = pooling
        self.temporal = (nn.Sequential(nn.Conv1d(dim, dim, 3, padding=1), nn.ReLU())
                         if pooling == "temporal_conv" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        per_frame = self.frames(x.reshape(n * t, *x.shape[2:])).view(n, t, -1)
        if self.temporal is None:
            return per_frame.mean(dim=1)
        return self.temporal(per_frame.transpose(1, 2)).amax(dim=2)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (N, T, D) over the positions where ``mask`` (N, T) is True; an
    all-padding row gives zeros."""
    w = mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Token ids (N, T), 0 = padding → (N, dim).

    ``mean``: embedding + masked mean pooling. ``transformer``: embedding +
    learned positions + a TransformerEncoder (padding masked), masked mean
    pooling. ``forward(ids, mixed)`` applies the deferred embedding mixup
    (``app.ml.mixing.embedding_mixup``) when ``name`` is in ``mixed.deferred``,
    or when ``mixed.layer == 0`` (manifold mixup at the inputs: ids cannot be
    interpolated, their embeddings can), and then attends over the union mask.
    """

    def __init__(self, vocab_size: int, dim: int, max_length: int, kind: str = "mean",
                 text_dim: int = 64, heads: int = 4, layers: int = 1, dropout: float = 0.0,
                 name: str = "text") -> None:
        super().__init__()
        if kind not in ("mean", "transformer"):
            raise ValueError(f"unknown text encoder {kind!r}")
        self.name, self.kind = name, kind
        self.embed = nn.Embedding(vocab_size, text_dim, padding_idx=PAD_ID)
        if kind == "transformer":
            self.pos = nn.Parameter(torch.zeros(1, max_length, text_dim))
            nn.init.normal_(self.pos, std=0.02)
            layer = nn.TransformerEncoderLayer(text_dim, heads, 2 * text_dim, dropout,
                                               batch_first=True)
            self.encoder: nn.TransformerEncoder | None = nn.TransformerEncoder(
                layer, layers, enable_nested_tensor=False)
        else:
            self.encoder = None
        self.proj = nn.Linear(text_dim, dim)

    def mixes(self, mixed: Mixed | None) -> bool:
        return mixed is not None and (self.name in mixed.deferred or mixed.layer == 0)

    def forward(self, ids: torch.Tensor, mixed: Mixed | None = None) -> torch.Tensor:
        ids = ids.long()
        emb = self.embed(ids)
        mask = ids != PAD_ID
        if self.encoder is not None:
            emb = emb + self.pos[:, :ids.shape[1]]
        if self.mixes(mixed):
            emb, mask = embedding_mixup(emb, mask, mixed.lam, mixed.index)  # type: ignore[union-attr]
        if self.encoder is not None:
            # a row with no tokens attends over everything (its output is pooled to 0)
            empty = ~mask.any(dim=1, keepdim=True)
            h = self.encoder(emb, src_key_padding_mask=~(mask | empty))
        else:
            h = emb
        return self.proj(masked_mean(h, mask))


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_freqs, n_mels), built in torch."""
    f_max = f_max if f_max is not None else sample_rate / 2

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sample_rate / 2, n_freqs)
    lo, hi = hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max))
    mels = torch.linspace(float(lo), float(hi), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    left, centre, right = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - left[None]) / (centre - left).clamp_min(1e-6)[None]
    down = (right[None] - freqs[:, None]) / (right - centre).clamp_min(1e-6)[None]
    return torch.clamp(torch.minimum(up, down), min=0.0)


class LogMel(nn.Module):
    """Waveforms (N, L) → log-mel spectrograms (N, 1, n_mels, frames)."""

    def __init__(self, sample_rate: int = 16_000, n_fft: int = 400, hop_length: int = 160,
                 n_mels: int = 64) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.sample_rate = n_fft, hop_length, sample_rate
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate),
                             persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float()
        n_fft = min(self.n_fft, wave.shape[-1])
        window = self.window if n_fft == self.n_fft else torch.hann_window(
            n_fft, device=wave.device)
        spec = torch.stft(wave, n_fft, self.hop_length, window=window, center=True,
                          pad_mode="reflect" if wave.shape[-1] > n_fft // 2 else "constant",
                          return_complex=True)
        power = spec.abs() ** 2  # (N, n_fft // 2 + 1, frames)
        fbank = self.fbank if n_fft == self.n_fft else mel_filterbank(
            n_fft // 2 + 1, self.fbank.shape[1], self.sample_rate).to(wave.device)
        mel = torch.einsum("nft,fm->nmt", power, fbank)
        return torch.log(mel + 1e-6).unsqueeze(1)


class AudioEncoder(nn.Module):
    """Audio → (N, dim). Waveforms (N, L) go through ``LogMel`` first;
    spectrograms (N, F, T) or (N, C, F, T) are used as they are; then a ConvEncoder."""

    def __init__(self, sample_shape: tuple[int, ...], dim: int, width: int = 32, depth: int = 3,
                 n_mels: int = 64) -> None:
        super().__init__()
        self.waveform = len(sample_shape) == 1
        self.logmel = LogMel(n_mels=n_mels) if self.waveform else None
        if self.waveform:
            channels, side = 1, n_mels
        elif len(sample_shape) == 2:
            channels, side = 1, min(sample_shape)
        else:
            channels, side = sample_shape[0], min(sample_shape[1:])
        self.cnn = ConvEncoder(channels, dim, width, depth, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.logmel is not None:
            x = self.logmel(x)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        return self.cnn(x.float())


class TabularEncoder(nn.Module):
    """Features (N, D) → (N, dim): an MLP. Columns listed in ``categorical``
    hold integer codes (0 … cardinality-1) and get an embedding each (codes out
    of range are clamped); the rest are used as numbers.

    Mixing: a code cannot be interpolated, its embedding can. Mixing one-hot
    codes and then embedding them is λ·E[a] + (1−λ)·E[b], so that is what
    ``forward(x, mixed)`` does for the categorical columns when ``name`` was
    mixed at the input (``name in mixed.ops``; the columns must then hold each
    sample's *own* codes, which the trainer restores after ``mix``) or at
    manifold layer 0 (where the numeric columns are interpolated here too).
    """

    def __init__(self, num_features: int, dim: int, hidden: int | None = None,
                 categorical: list[int] | None = None, cardinalities: list[int] | None = None,
                 embed_dim: int = 8, dropout: float = 0.0, name: str = "tabular") -> None:
        super().__init__()
        self.name = name
        self.categorical = list(categorical or [])
        if any(not 0 <= c < num_features for c in self.categorical) \
                or len(set(self.categorical)) != len(self.categorical):
            raise ValueError(f"categorical columns must be distinct indices in "
                             f"0..{num_features - 1}")
        if len(self.categorical) != len(cardinalities or []):
            raise ValueError("categorical columns and cardinalities must have the same length")
        self.cardinalities = list(cardinalities or [])
        self.numeric = [i for i in range(num_features) if i not in set(self.categorical)]
        self.embeds = nn.ModuleList(nn.Embedding(c, embed_dim) for c in self.cardinalities)
        self.register_buffer("numeric_idx", torch.tensor(self.numeric, dtype=torch.long),
                             persistent=False)
        width = len(self.numeric) + embed_dim * len(self.categorical)
        hidden = hidden or max(dim, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mixed: Mixed | None = None) -> torch.Tensor:
        at_inputs = mixed is not None and mixed.layer == 0
        mix_codes = mixed is not None and (at_inputs or self.name in mixed.ops)
        lam, index = (mixed.lam, mixed.index) if mixed is not None else (None, None)
        parts = []
        if self.numeric:
            numeric = x.index_select(1, self.numeric_idx).float()
            if at_inputs:
                numeric = interpolate(numeric, numeric[index], lam)
            parts.append(numeric)
        for col, card, emb in zip(self.categorical, self.cardinalities, self.embeds, strict=True):
            e = emb(x[:, col].round().long().clamp(0, card - 1))
            if mix_codes:
                e = interpolate(e, e[index], lam)
            parts.append(e)
        return self.mlp(torch.cat(parts, dim=1))
