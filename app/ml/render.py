"""PNG rendering of previews, one function per kind of modality. Pillow is
imported on use, so ``app.ml`` imports with torch alone.

- images: a grid, one row per sample: source A | source B | mixed, with the
  cutmix box outlined;
- video: per sample, a strip of frames for A, for B and for the mix, the
  cutmix box outlined on every frame of the mix;
- audio: spectrograms A | B | mixed (low frequencies at the bottom; a waveform
  is shown as its log-magnitude STFT), with specmix bands or the spec_cutmix
  box outlined;
- text: the mixed token sequence, each token coloured by its source; for an
  op the model applies itself (embedding_mixup), A's and B's tokens with their
  weights and the attention mask;
- tabular: a small table, feature | A | B | mixed.
"""

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_MIN_CELL = 96
_MAX_CELL_W = 384
_MAX_CELL_H = 256
_GAP = 6
_HEADER = 18
_CAPTION_W = 220
_LINE = 14
_BOX_COLOUR = (230, 40, 40)
SOURCE_COLOURS = {"a": (190, 214, 255), "b": (255, 208, 160)}  # fills of A's and B's tokens
_SOURCE_EDGES = {"a": (40, 90, 200), "b": (210, 110, 20)}
# viridis, sampled: no red in it, so outlines stand out
_VIRIDIS = torch.tensor([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142),
                         (38, 130, 142), (31, 158, 137), (53, 183, 121), (110, 206, 88),
                         (181, 222, 43), (253, 231, 37)], dtype=torch.float32)


def _png(canvas: Any) -> bytes:
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


# ------------------------------------------------------------------------- images


def _to_pil(image: torch.Tensor, scale: int):  # type: ignore[no-untyped-def]
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] >= 3:
        pil = Image.fromarray(pixels[:3].permute(1, 2, 0).contiguous().numpy(), "RGB")
    else:
        pil = Image.fromarray(pixels[0].contiguous().numpy(), "L").convert("RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def render_mix_grid(images_a: torch.Tensor, images_b: torch.Tensor, mixed: torch.Tensor,
                    captions: list[str],
                    boxes: Sequence[Sequence[int] | None] | None = None) -> bytes:
    """One row per sample: source A | source B | mixed (cutmix box outlined),
    with a caption; images are (n, C, H, W) floats in [0, 1] (a video's
    (n, T, C, H, W) shows its middle frame). A sample whose box is None or
    empty was not cut (mixup_cutmix interpolated it) and gets no outline."""
    from PIL import Image, ImageDraw

    if mixed.dim() == 5:
        middle = mixed.shape[1] // 2
        images_a, images_b, mixed = images_a[:, middle], images_b[:, middle], mixed[:, middle]
    n, _, height, width = mixed.shape
    scale = max(1, math.ceil(_MIN_CELL / max(height, width)))
    cell_w, cell_h = width * scale, height * scale
    canvas = Image.new("RGB", (3 * cell_w + 4 * _GAP + _CAPTION_W,
                               _HEADER + n * (cell_h + _GAP) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("source A", "source B", "mixed")):
        draw.text((_GAP + col * (cell_w + _GAP), 4), title, fill="black")
    for row in range(n):
        top = _HEADER + row * (cell_h + _GAP)
        for col, image in enumerate((images_a[row], images_b[row], mixed[row])):
            canvas.paste(_to_pil(image, scale), (_GAP + col * (cell_w + _GAP), top))
        box = boxes[row] if boxes is not None else None
        if box is not None:
            y0, x0, y1, x1 = box
            if y1 > y0 and x1 > x0:
                left = _GAP + 2 * (cell_w + _GAP)
                draw.rectangle([left + x0 * scale, top + y0 * scale,
                                left + x1 * scale - 1, top + y1 * scale - 1],
                               outline=_BOX_COLOUR, width=max(1, scale // 8))
        draw.multiline_text((4 * _GAP + 3 * cell_w, top + 4), captions[row], fill="black")
    return _png(canvas)


# -------------------------------------------------------------------------- video

VIDEO_MAX_FRAMES = 16  # frames drawn per strip; longer clips show evenly spaced ones
_MIN_FRAME = 48
_STRIP_LABEL_W = 56
_FRAME_GAP = 2


def video_frames_shown(frames: int) -> list[int]:
    """Which frames a strip draws: all, or ``VIDEO_MAX_FRAMES`` evenly spaced."""
    if frames <= VIDEO_MAX_FRAMES:
        return list(range(frames))
    return torch.linspace(0, frames - 1, VIDEO_MAX_FRAMES).round().long().tolist()


def video_strip_size(n: int, frames: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) of ``render_video_strips``'s PNG for ``n`` samples."""
    scale = max(1, math.ceil(_MIN_FRAME / max(height, width)))
    shown = len(video_frames_shown(frames))
    strip_w = shown * (width * scale + _FRAME_GAP) - _FRAME_GAP
    block_h = 3 * (height * scale + _GAP) + _GAP
    return (_STRIP_LABEL_W + strip_w + 2 * _GAP + _CAPTION_W, _HEADER + n * block_h)


def render_video_strips(clips_a: torch.Tensor, clips_b: torch.Tensor, mixed: torch.Tensor,
                        captions: list[str],
                        boxes: Sequence[Sequence[int] | None] | None = None) -> bytes:
    """Per sample, three strips of frames: source A, source B and the mix, with
    the cutmix box (y0, x0, y1, x1; one box for the whole clip) outlined on every
    frame of the mix; clips are (n, T, C, H, W) floats in [0, 1]."""
    from PIL import Image, ImageDraw

    n, frames, _, height, width = mixed.shape
    scale = max(1, math.ceil(_MIN_FRAME / max(height, width)))
    cell_w, cell_h = width * scale, height * scale
    shown = video_frames_shown(frames)
    size = video_strip_size(n, frames, height, width)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    left = _STRIP_LABEL_W
    draw.text((left, 4), f"frames {', '.join(str(t) for t in shown)}"
              if len(shown) < frames else f"frames 0-{frames - 1}", fill="black")
    block_h = 3 * (cell_h + _GAP) + _GAP
    for row in range(n):
        top = _HEADER + row * block_h
        box = boxes[row] if boxes is not None else None
        for strip, (title, clip) in enumerate((("A", clips_a[row]), ("B", clips_b[row]),
                                                ("mixed", mixed[row]))):
            y = top + strip * (cell_h + _GAP)
            draw.text((_GAP, y + 4), title, fill="black")
            for col, t in enumerate(shown):
                x = left + col * (cell_w + _FRAME_GAP)
                canvas.paste(_to_pil(clip[t], scale), (x, y))
                if strip == 2 and box is not None and box[2] > box[0] and box[3] > box[1]:
                    y0, x0, y1, x1 = box
                    draw.rectangle([x + x0 * scale, y + y0 * scale,
                                    x + x1 * scale - 1, y + y1 * scale - 1],
                                   outline=_BOX_COLOUR, width=max(1, scale // 8))
        strip_w = len(shown) * (cell_w + _FRAME_GAP) - _FRAME_GAP
        draw.multiline_text((left + strip_w + 2 * _GAP, top + 4), captions[row], fill="black")
    return _png(canvas)


# -------------------------------------------------------------------------- audio


def waveform_spectrogram(wave: torch.Tensor) -> torch.Tensor:
    """Log-magnitude STFT (dB) of waveforms (n, L) or (n, 1, L): (n, F, T) float32."""
    x = wave.reshape(wave.shape[0], -1).float()
    length = x.shape[1]
    if length < 2:
        return x[:, None, :]
    n_fft = min(512, 2 ** int(math.log2(max(2, length // 8))), 2 ** int(math.log2(length)))
    n_fft = max(2, n_fft)
    spec = torch.stft(x, n_fft=n_fft, hop_length=max(1, n_fft // 4),
                      window=torch.hann_window(n_fft), center=False, return_complex=True)
    return 20.0 * torch.log10(spec.abs() + 1e-6)


def _colourise(values: torch.Tensor) -> torch.Tensor:
    """(F, T) in [0, 1] → (F, T, 3) uint8 through the viridis ramp."""
    pos = values.clamp(0, 1) * (len(_VIRIDIS) - 1)
    lo = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - lo.float())[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    return rgb.round().to(torch.uint8)


def _spec_cell(freq: int, time: int) -> tuple[int, int]:
    """Panel size: each axis scaled on its own by a whole factor to at least
    _MIN_CELL pixels, and squeezed to at most the maximum."""

    def side(cells: int, most: int) -> int:
        return min(cells * max(1, math.ceil(_MIN_CELL / cells)), most)

    return side(time, _MAX_CELL_W), side(freq, _MAX_CELL_H)


def _spec_panel(values: torch.Tensor, size: tuple[int, int]):  # type: ignore[no-untyped-def]
    """(F, T) in [0, 1] as an image of ``size``, low frequencies at the bottom."""
    from PIL import Image

    rgb = _colourise(values.flip(0)).contiguous().numpy()
    pil = Image.fromarray(rgb, "RGB")
    upscale = size[0] >= pil.width and size[1] >= pil.height
    return pil.resize(size, Image.NEAREST if upscale else Image.BILINEAR)


def spectrogram_rects(region: Sequence[int] | None, layout: str | None, freq: int,
                      time: int) -> list[tuple[int, int, int, int]]:
    """Cells (f0, t0, f1, t1), half-open, that an op took from the partner:
    ``bands`` (specmix: f0, f1, t0, t1) gives a frequency and a time band,
    ``box`` (spec_cutmix: f0, t0, f1, t1) one rectangle."""
    if region is None or layout is None:
        return []
    if layout == "bands":
        f0, f1, t0, t1 = (int(v) for v in region)
        rects = [(f0, 0, f1, time), (0, t0, freq, t1)]
    else:
        f0, t0, f1, t1 = (int(v) for v in region)
        rects = [(f0, t0, f1, t1)]
    return [r for r in rects if r[2] > r[0] and r[3] > r[1]]


def render_spectrograms(a: torch.Tensor, b: torch.Tensor, mixed: torch.Tensor,
                        captions: list[str],
                        regions: Sequence[Sequence[int] | None] | None = None,
                        layout: str | None = None, waveform: bool = False) -> bytes:
    """One row per sample: spectrograms of A | B | mixed, the cells taken from B
    outlined (``layout`` ``bands`` for specmix, ``box`` for spec_cutmix; a None
    region: nothing taken).

    Spectrograms are (n, F, T) or (n, C, F, T) (channels averaged); with
    ``waveform`` the inputs are (n, L) waveforms, shown as log-magnitude STFTs.
    Colours share one scale across the picture."""
    from PIL import Image, ImageDraw

    if waveform:
        a, b, mixed = (waveform_spectrogram(x) for x in (a, b, mixed))
        regions = None
    a, b, mixed = (x.float().mean(dim=1) if x.dim() == 4 else x.float() for x in (a, b, mixed))
    n, freq, time = mixed.shape
    stacked = torch.stack([a, b, mixed])
    finite = stacked[torch.isfinite(stacked)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    norm = ((stacked - lo) / max(hi - lo, 1e-12)).nan_to_num(0.0)
    cell_w, cell_h = _spec_cell(freq, time)
    sx, sy = cell_w / time, cell_h / freq
    canvas = Image.new("RGB", (3 * cell_w + 4 * _GAP + _CAPTION_W,
                               _HEADER + n * (cell_h + _GAP) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ("source A", "source B", "mixed") if not waveform else (
        "source A (STFT)", "source B (STFT)", "mixed (STFT)")
    for col, title in enumerate(titles):
        draw.text((_GAP + col * (cell_w + _GAP), 4), title, fill="black")
    width = max(1, round(min(sx, sy) / 4))
    for row in range(n):
        top = _HEADER + row * (cell_h + _GAP)
        for col in range(3):
            canvas.paste(_spec_panel(norm[col, row], (cell_w, cell_h)),
                         (_GAP + col * (cell_w + _GAP), top))
        left = _GAP + 2 * (cell_w + _GAP)
        region = regions[row] if regions is not None else None
        for f0, t0, f1, t1 in spectrogram_rects(region, layout, freq, time):
            # frequency runs bottom-up on screen
            draw.rectangle([left + round(t0 * sx), top + round((freq - f1) * sy),
                            left + round(t1 * sx) - 1, top + round((freq - f0) * sy) - 1],
                           outline=_BOX_COLOUR, width=width)
        draw.multiline_text((4 * _GAP + 3 * cell_w, top + 4), captions[row], fill="black")
    return _png(canvas)


# --------------------------------------------------------------------------- text


@dataclass
class TextRow:
    """One sample's text: ``tokens`` is the mixed sequence as (token, source);
    for a deferred op (the model mixes embeddings) ``tokens`` is None and A's and
    B's tokens are shown with weights ``lam`` and ``1 - lam`` and the mask."""

    caption: str
    tokens: list[tuple[str, str]] | None = None
    tokens_a: list[str] | None = None
    tokens_b: list[str] | None = None
    lam: float = 1.0
    mask: list[bool] | None = None
    truncated: bool = False


_TEXT_W = 720
_CHIP_H = 16


class _Flow:
    """Lays out chips left to right, wrapping at the canvas width."""

    def __init__(self, draw: Any, font: Any, left: int, top: int, right: int) -> None:
        self.draw, self.font = draw, font
        self.left, self.x, self.y, self.right = left, left, top, right

    def chip(self, text: str, fill: tuple[int, int, int] | None,
             edge: tuple[int, int, int] | None, dry: bool = False) -> None:
        width = int(self.draw.textlength(text, font=self.font)) + 6
        if self.x + width > self.right and self.x > self.left:
            self.x, self.y = self.left, self.y + _CHIP_H + 3
        if not dry:
            if fill is not None:
                self.draw.rectangle([self.x, self.y, self.x + width - 1, self.y + _CHIP_H - 1],
                                    fill=fill, outline=edge)
            self.draw.text((self.x + 3, self.y + 2), text, fill="black", font=self.font)
        self.x += width + 3

    def newline(self) -> None:
        self.x, self.y = self.left, self.y + _CHIP_H + 3

    @property
    def bottom(self) -> int:
        return self.y + _CHIP_H


def _layout_text(draw: Any, font: Any, rows: list[TextRow], top: int, dry: bool) -> int:
    y = top
    for row in rows:
        for line in row.caption.split("\n"):
            if not dry:
                draw.text((_GAP, y), line, fill="black", font=font)
            y += _LINE
        flow = _Flow(draw, font, _GAP, y + 2, _TEXT_W - _GAP)
        if row.tokens is not None:
            for token, source in row.tokens:
                flow.chip(token, SOURCE_COLOURS[source], _SOURCE_EDGES[source], dry)
            if row.truncated:
                flow.chip("…", None, None, dry)
        else:
            for label, tokens, source, weight in (("A", row.tokens_a, "a", row.lam),
                                                  ("B", row.tokens_b, "b", 1.0 - row.lam)):
                flow.chip(f"{label} x {weight:.2f}:", None, None, dry)
                for token in tokens or []:
                    flow.chip(token, SOURCE_COLOURS[source], _SOURCE_EDGES[source], dry)
                flow.newline()
            if row.mask is not None:
                flow.chip("mask:", None, None, dry)
                for on in row.mask:
                    flow.chip(" ", (60, 60, 60) if on else (255, 255, 255), (60, 60, 60), dry)
        y = flow.bottom + 2 * _GAP
    return y


def render_tokens(rows: list[TextRow]) -> bytes:
    """Text previews: per sample a caption, then the mixed tokens coloured by
    source (A blue, B orange), or, for a deferred op, A's and B's tokens with
    their weights and the attention mask (filled = attended)."""
    from PIL import Image, ImageDraw

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    height = _layout_text(probe, font, rows, _HEADER + _GAP, dry=True)
    canvas = Image.new("RGB", (_TEXT_W, height + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    flow = _Flow(draw, font, _GAP, 2, _TEXT_W)
    flow.chip("from source A", SOURCE_COLOURS["a"], _SOURCE_EDGES["a"])
    flow.chip("from source B", SOURCE_COLOURS["b"], _SOURCE_EDGES["b"])
    _layout_text(draw, font, rows, _HEADER + _GAP, dry=False)
    return _png(canvas)


# ------------------------------------------------------------------------ tabular


def render_table(features: list[str], a: torch.Tensor, b: torch.Tensor, mixed: torch.Tensor,
                 captions: list[str]) -> bytes:
    """Tabular previews: per sample a caption and a table feature | A | B | mixed;
    a, b and mixed are (n, D) with D = len(features)."""
    from PIL import Image, ImageDraw

    font = _font()
    n, dims = mixed.shape[0], len(features)
    col_w = 90
    name_w = max([60] + [int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(f, font=font))
                         + 12 for f in features])
    width = max(name_w + 3 * col_w + 2 * _GAP, 360)
    caption_lines = [c.count("\n") + 1 for c in captions]
    block = [lines * _LINE + (dims + 1) * _LINE + 3 * _GAP for lines in caption_lines]
    canvas = Image.new("RGB", (width, sum(block) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    y = _GAP
    columns = (("feature", name_w), ("A", col_w), ("B", col_w), ("mixed", col_w))
    for row in range(n):
        draw.multiline_text((_GAP, y), captions[row], fill="black", font=font)
        y += caption_lines[row] * _LINE + 2
        x = _GAP
        draw.rectangle([_GAP, y, _GAP + name_w + 3 * col_w, y + _LINE - 1], fill=(225, 225, 225))
        for title, w in columns:
            draw.text((x + 3, y + 1), title, fill="black", font=font)
            x += w
        for d in range(dims):
            y += _LINE
            if d % 2:
                draw.rectangle([_GAP, y, _GAP + name_w + 3 * col_w, y + _LINE - 1],
                               fill=(245, 245, 245))
            cells = (features[d], f"{float(a[row, d]):.4g}", f"{float(b[row, d]):.4g}",
                     f"{float(mixed[row, d]):.4g}")
            x = _GAP
            for text, (_, w) in zip(cells, columns, strict=True):
                draw.text((x + 3, y + 1), text, fill="black", font=font)
                x += w
        y += _LINE + 2 * _GAP
    return _png(canvas)
