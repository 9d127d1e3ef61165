"""PNG rendering of previews. Pillow is imported on use, so ``app.ml`` imports
with torch alone."""

import io
import math

import torch

_MIN_CELL = 96
_GAP = 6
_HEADER = 18
_BOX_COLOUR = (230, 40, 40)


def _to_pil(image: torch.Tensor, scale: int):  # type: ignore[no-untyped-def]
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 3:
        pil = Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
    else:
        pil = Image.fromarray(pixels[0].numpy(), "L").convert("RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def render_mix_grid(images_a: torch.Tensor, images_b: torch.Tensor, mixed: torch.Tensor,
                    captions: list[str], boxes: list[list[int]] | None = None) -> bytes:
    """One row per sample: source A | source B | mixed (cutmix box outlined),
    with a caption; images are (n, C, H, W) floats in [0, 1]."""
    from PIL import Image, ImageDraw

    n, _, height, width = mixed.shape
    scale = max(1, math.ceil(_MIN_CELL / max(height, width)))
    cell_w, cell_h = width * scale, height * scale
    caption_w = 220
    canvas = Image.new("RGB", (3 * cell_w + 4 * _GAP + caption_w,
                               _HEADER + n * (cell_h + _GAP) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("source A", "source B", "mixed")):
        draw.text((_GAP + col * (cell_w + _GAP), 4), title, fill="black")
    for row in range(n):
        top = _HEADER + row * (cell_h + _GAP)
        for col, image in enumerate((images_a[row], images_b[row], mixed[row])):
            canvas.paste(_to_pil(image, scale), (_GAP + col * (cell_w + _GAP), top))
        if boxes is not None:
            y0, x0, y1, x1 = boxes[row]
            if y1 > y0 and x1 > x0:
                left = _GAP + 2 * (cell_w + _GAP)
                draw.rectangle([left + x0 * scale, top + y0 * scale,
                                left + x1 * scale - 1, top + y1 * scale - 1],
                               outline=_BOX_COLOUR, width=max(1, scale // 8))
        draw.multiline_text((4 * _GAP + 3 * cell_w, top + 4), captions[row], fill="black")
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
