"""Looking at an autoencoder's representation: latent means of a split, their 2-D
PCA projection, and PNGs of the projection (coloured by class), of
reconstructions (input | reconstruction per modality) and of cross-modal
generation (modality a | b decoded from a alone | b itself).

Inputs are raw (as prepared datasets store them) and go through the run's
normalisation; the pictures show normalised values, each panel pair on the
input's own scale so input and output compare. Pillow is imported on use.
"""

from collections.abc import Mapping

import torch

from app.ml.models.latent import LatentModel
from app.ml.render import _GAP, _HEADER, _colourise, _font, _png
from app.ml.training.batches import gather
from app.ml.training.normalization import Normalizer

_CELL = 96  # panel side in pixels
_PLOT = 480  # scatter plot side
# tab10: distinct class colours, repeated past 10 classes
_CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                  (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                  (188, 189, 34), (23, 190, 207)]


def normalized(inputs: Mapping[str, torch.Tensor], normalize: Mapping[str, Normalizer],
               present: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Raw inputs as the model reads them (absent samples zeroed), and their masks."""
    return gather(inputs, normalize, slice(None), torch.device("cpu"), present)


@torch.inference_mode()
def latent_means(model: LatentModel, inputs: Mapping[str, torch.Tensor],
                 present: Mapping[str, torch.Tensor] | None = None,
                 batch_size: int = 512) -> torch.Tensor:
    """The fused posterior mean (N, latent_dim) of normalised inputs, in batches."""
    model.eval()
    n = next(iter(inputs.values())).shape[0]
    out = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        mu, _ = model.encode({m: x[rows] for m, x in inputs.items()},
                             {m: p[rows] for m, p in (present or {}).items()})
        out.append(mu.float())
    return torch.cat(out) if out else torch.zeros(0, model.latent_dim)


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Projection of (N, D) points on their first two principal axes (N, 2) and the
    share of the variance each explains (fewer axes than 2 pad with zeros)."""
    x = points.double() - points.double().mean(dim=0, keepdim=True)
    if x.shape[0] < 2:
        return torch.zeros(x.shape[0], 2), [0.0, 0.0]
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = torch.zeros(x.shape[0], 2, dtype=torch.float64)
    coords[:, :k] = x @ vh[:k].T
    var = s.pow(2)
    total = float(var.sum()) or 1.0
    shares = [float(v) / total for v in var[:k]] + [0.0] * (2 - k)
    return coords.float(), shares


def render_scatter(coords: torch.Tensor, labels: list[int], class_names: list[str],
                   title: str) -> bytes:
    """The 2-D points as dots coloured by class, with a legend; (_PLOT + legend) wide."""
    from PIL import Image, ImageDraw

    legend_w = 120
    canvas = Image.new("RGB", (_PLOT + legend_w, _PLOT + _HEADER), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, 4), title, fill="black", font=_font())
    margin = 12
    if coords.shape[0]:
        lo, hi = coords.min(dim=0).values, coords.max(dim=0).values
        span = (hi - lo).clamp_min(1e-9)
        pix = (coords - lo) / span * (_PLOT - 2 * margin) + margin
        for (x, y), label in zip(pix.tolist(), labels, strict=True):
            colour = _CLASS_COLOURS[label % len(_CLASS_COLOURS)]
            top = _HEADER + (_PLOT - y)  # y up
            draw.ellipse([x - 3, top - 3, x + 3, top + 3], fill=colour)
    for i, name in enumerate(class_names[:40]):
        top = _HEADER + margin + i * 14
        draw.rectangle([_PLOT + 4, top + 2, _PLOT + 12, top + 10],
                       fill=_CLASS_COLOURS[i % len(_CLASS_COLOURS)])
        draw.text((_PLOT + 16, top), name[:16], fill="black", font=_font())
    return _png(canvas)


def _grid(values: torch.Tensor, kind: str) -> torch.Tensor:
    """A sample's values as a 2-D grid (rows, cols) to colour: an image's channels
    averaged, a video's middle frame, a spectrogram as it is, a row of values
    (tabular, waveform, token ids) as one row."""
    x = values.float()
    if kind == "video":
        x = x[x.shape[0] // 2]
    if x.dim() == 3:
        x = x.mean(dim=0)
    if x.dim() == 1:
        x = x[None, :]
    return x


def _panel(values: torch.Tensor, kind: str, lo: float, hi: float):  # type: ignore[no-untyped-def]
    """One sample of one modality as a _CELL-high picture on the scale lo..hi
    (greyscale for images and video frames, viridis for the rest)."""
    from PIL import Image

    grid = ((_grid(values, kind) - lo) / max(hi - lo, 1e-9)).clamp(0, 1).nan_to_num(0.0)
    if kind in ("image", "video"):
        pixels = (grid * 255).round().to(torch.uint8).contiguous().numpy()
        pil = Image.fromarray(pixels, "L").convert("RGB")
    else:
        pil = Image.fromarray(_colourise(grid.flip(0)).contiguous().numpy(), "RGB")
    rows, cols = grid.shape
    width = min(4 * _CELL, max(_CELL, round(_CELL * cols / max(rows, 1))))
    return pil.resize((width, _CELL), Image.NEAREST)


def _scale(x: torch.Tensor) -> tuple[float, float]:
    finite = x[torch.isfinite(x)].float()
    return (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)


def _text_values(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Token logits (T, V) → the most likely ids (T,); anything else as it is."""
    return x.argmax(dim=-1).float() if kind == "text" and x.dim() == 2 else x.float()


Cell = tuple[torch.Tensor, str, torch.Tensor]  # values, kind, the values whose range scales it


def render_columns(rows: list[list[Cell]], titles: list[str], captions: list[str]) -> bytes:
    """A table of panels, one row per sample; each cell is drawn on the range of
    its reference values (an output on its input's, so the two compare)."""
    from PIL import Image, ImageDraw

    pictures = []
    for row in rows:
        line = []
        for values, kind, reference in row:
            lo, hi = _scale(_text_values(reference, kind))
            line.append(_panel(_text_values(values, kind), kind, lo, hi))
        pictures.append(line)
    widths = [max(p[j].width for p in pictures) for j in range(len(titles))]
    caption_w = 120
    canvas = Image.new("RGB", (sum(widths) + (len(widths) + 1) * _GAP + caption_w,
                               _HEADER + len(rows) * (_CELL + _GAP) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    lefts = [_GAP + sum(widths[:j]) + j * _GAP for j in range(len(widths))]
    for j, title in enumerate(titles):
        draw.text((lefts[j], 4), title, fill="black", font=_font())
    for i, line in enumerate(pictures):
        top = _HEADER + i * (_CELL + _GAP)
        for j, pil in enumerate(line):
            canvas.paste(pil, (lefts[j], top))
        draw.text((lefts[-1] + widths[-1] + _GAP, top + 4), captions[i], fill="black",
                  font=_font())
    return _png(canvas)


@torch.inference_mode()
def render_reconstructions(model: LatentModel, inputs: Mapping[str, torch.Tensor],
                           present: Mapping[str, torch.Tensor], kinds: Mapping[str, str],
                           captions: list[str]) -> bytes:
    """Per sample (row): input | reconstruction, for each modality of the model,
    decoded from the posterior mean of every modality the sample has."""
    model.eval()
    mu, _ = model.encode(inputs, present)
    recon = model.decode(mu)
    modalities = model.modalities
    titles = [t for m in modalities for t in (f"{m} input", f"{m} reconstruction")]
    rows = [[c for m in modalities for c in ((inputs[m][i], kinds[m], inputs[m][i]),
                                             (recon[m][i], kinds[m], inputs[m][i]))]
            for i in range(len(captions))]
    return render_columns(rows, titles, captions)


@torch.inference_mode()
def render_generation(model: LatentModel, inputs: Mapping[str, torch.Tensor],
                      source: str, target: str, kinds: Mapping[str, str],
                      captions: list[str]) -> bytes:
    """Per sample: ``source`` | ``target`` decoded from ``source`` alone | ``target``
    as it is (the generated one on the actual one's range)."""
    model.eval()
    mu, _ = model.encode({source: inputs[source]})
    generated = model.decode(mu)[target]
    titles = [f"{source} given", f"{target} generated", f"{target} actual"]
    rows = [[(inputs[source][i], kinds[source], inputs[source][i]),
             (generated[i], kinds[target], inputs[target][i]),
             (inputs[target][i], kinds[target], inputs[target][i])]
            for i in range(len(captions))]
    return render_columns(rows, titles, captions)
