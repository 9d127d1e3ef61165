"""Preview rendering: every modality gives a valid PNG, and what an op took from
the partner is drawn. Also ``preview_mix`` on a multimodal dataset, and previews
saying per sample what ran (mixup_cutmix cuts some samples, interpolates others)."""

import io
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.preview import preview_mix
from app.ml.render import (
    SOURCE_COLOURS,
    TextRow,
    render_mix_grid,
    render_spectrograms,
    render_table,
    render_tokens,
    spectrogram_rects,
    waveform_spectrogram,
)


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.mode == "RGB" and image.width > 50 and image.height > 20
    return np.asarray(image)


def red_pixels(pixels: np.ndarray) -> int:
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    return int(((r > 200) & (g < 80) & (b < 80)).sum())


def has_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((pixels == np.array(colour, dtype=np.uint8)).all(axis=-1).any())


CAPTIONS = ["#1 + #2\nlambda = 0.5", "#2 + #1\nlambda = 0.5"]


# ------------------------------------------------------------------------- images


def test_image_grid_outlines_the_cutmix_box():
    grey = torch.full((2, 3, 8, 8), 0.5)
    plain = decode(render_mix_grid(grey, grey, grey, CAPTIONS))
    assert red_pixels(plain) == 0
    boxed = decode(render_mix_grid(grey, grey, grey, CAPTIONS, [[1, 1, 5, 6], [0, 0, 0, 0]]))
    assert red_pixels(boxed) > 20
    assert boxed.shape == plain.shape


def test_image_grid_takes_grey_four_channel_and_video():
    for images in (torch.rand(2, 1, 5, 7), torch.rand(2, 4, 6, 6), torch.rand(2, 3, 3, 6, 6)):
        decode(render_mix_grid(images, images, images, CAPTIONS))


# -------------------------------------------------------------------------- audio


def test_spectrogram_rects_for_specmix_bands_and_spec_cutmix_box():
    # specmix regions are (f0, f1, t0, t1): a full-width frequency band, a full-height time band
    assert spectrogram_rects([2, 5, 7, 9], "bands", 16, 20) == [(2, 0, 5, 20), (0, 7, 16, 9)]
    assert spectrogram_rects([2, 2, 7, 9], "bands", 16, 20) == [(0, 7, 16, 9)]
    # spec_cutmix regions are (f0, t0, f1, t1)
    assert spectrogram_rects([2, 3, 6, 9], "box", 16, 20) == [(2, 3, 6, 9)]
    assert spectrogram_rects([0, 0, 0, 0], "box", 16, 20) == []
    assert spectrogram_rects(None, "box", 16, 20) == []


@pytest.mark.parametrize(("layout", "region"), [("bands", [4, 8, 10, 14]),
                                                ("box", [4, 10, 8, 14])])
def test_spectrograms_outline_what_came_from_b(layout, region):
    a = torch.zeros(2, 16, 24)
    b = torch.ones(2, 16, 24)
    plain = decode(render_spectrograms(a, b, a, CAPTIONS))
    assert red_pixels(plain) == 0
    drawn = decode(render_spectrograms(a, b, a, CAPTIONS, [region, [0, 0, 0, 0]], layout))
    assert red_pixels(drawn) > 20


def test_multichannel_spectrograms_and_large_ones_fit():
    spec = torch.randn(2, 2, 300, 700)
    pixels = decode(render_spectrograms(spec, spec, spec, CAPTIONS))
    assert pixels.shape[1] < 1600 and pixels.shape[0] < 700


def test_waveforms_are_drawn_as_stfts():
    t = torch.arange(4000) / 4000.0
    tone = torch.sin(2 * math.pi * 500 * t)  # 500 cycles over 4,000 samples
    spec = waveform_spectrogram(tone[None])
    assert spec.dim() == 3 and spec.shape[0] == 1
    n_fft = 2 * (spec.shape[1] - 1)
    peak = int(spec[0].mean(dim=1).argmax())
    assert peak == round(500 / 4000 * n_fft)
    waves = torch.randn(2, 4000)
    decode(render_spectrograms(waves, waves.flip(0), waves, CAPTIONS, waveform=True))
    decode(render_spectrograms(torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5),
                               CAPTIONS, waveform=True))


# --------------------------------------------------------------------------- text


def test_tokens_are_coloured_by_source():
    only_a = decode(render_tokens([TextRow("#1 + #2", tokens=[("hello", "a"), ("there", "a")])]))
    # the legend shows both colours; count pixels of each fill to compare rows
    both = decode(render_tokens([TextRow("#1 + #2", tokens=[("hello", "a"), ("world", "b")]),
                                 TextRow("#2 + #1", tokens=[("x" * 200, "b")] * 12,
                                         truncated=True)]))
    for pixels in (only_a, both):
        assert has_colour(pixels, SOURCE_COLOURS["a"]) and has_colour(pixels, SOURCE_COLOURS["b"])

    def count(pixels, source):
        return int((pixels == np.array(SOURCE_COLOURS[source], np.uint8)).all(axis=-1).sum())

    assert count(both, "b") > 4 * count(only_a, "b")  # long B chips, wrapped over lines
    assert both.shape[0] > only_a.shape[0]


def test_deferred_text_shows_both_sources_and_the_mask():
    png = render_tokens([TextRow("#1 + #2\nembedding_mixup", tokens_a=["a1", "a2"],
                                 tokens_b=["b1", "b2", "b3"], lam=0.7,
                                 mask=[True, True, True, False])])
    pixels = decode(png)
    assert has_colour(pixels, SOURCE_COLOURS["a"]) and has_colour(pixels, SOURCE_COLOURS["b"])
    assert has_colour(pixels, (60, 60, 60))  # the filled mask cells


# ------------------------------------------------------------------------ tabular


def test_table_has_a_row_per_feature():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    short = decode(render_table(["x0", "x1", "x2"], a, b, 0.5 * (a + b), CAPTIONS))
    a, b = torch.randn(2, 12), torch.randn(2, 12)
    long = decode(render_table([f"feature {i}" for i in range(12)], a, b, a, CAPTIONS))
    assert long.shape[0] > short.shape[0]


# ------------------------------------------------- preview_mix on every modality


@pytest.fixture(scope="module")
def synth():
    return load_synthetic(num_samples=200, num_classes=4, seed=0)


def cross_modal(**extra):  # type: ignore[no-untyped-def]
    return MixSpec(method="cross_modal", ops={"image": "cutmix", "audio": "specmix",
                                              "text": "token_cutmix"}, **extra)


def test_preview_mixes_every_modality_with_one_partner_and_lambda(synth):
    batch = preview_mix(synth, cross_modal(lam_mode="sample"), seed=3, n=6)
    assert set(batch.modalities) == {"image", "text", "audio", "tabular"}
    assert batch.modalities["tabular"].op == "mixup"
    index_a = torch.tensor(batch.indices_a)
    for mm in batch.modalities.values():
        assert mm.a.shape[0] == mm.b.shape[0] == mm.mixed.shape[0] == 6
    image = batch.modalities["image"]
    assert float(image.a.max()) <= 1.0 and float(image.a.min()) >= 0.0
    assert image.region is not None and batch.boxes == image.region.tolist()
    tab = batch.modalities["tabular"]
    lam = torch.tensor(batch.lam)[:, None]
    assert torch.allclose(tab.mixed, lam * tab.a + (1 - lam) * tab.b, atol=1e-5)
    assert torch.equal(tab.a, synth.inputs["tabular"][index_a])
    assert torch.equal(tab.b, synth.inputs["tabular"][torch.tensor(batch.indices_b)])
    text = batch.modalities["text"]
    for i in range(6):
        start, end, b_start = text.region[i].tolist()
        for pos, token, source in text.token_sources(i):
            inside = start <= pos < end
            expected = text.b[i, pos - start + b_start] if inside else text.a[i, pos]
            assert source == ("b" if inside else "a")
            assert token == int(expected) == int(text.mixed[i, pos])
    audio = batch.modalities["audio"]
    assert audio.region is not None and audio.region.shape == (6, 4)


def test_preview_is_seeded(synth):
    one = preview_mix(synth, cross_modal(), seed=5, n=4)
    two = preview_mix(synth, cross_modal(), seed=5, n=4)
    other = preview_mix(synth, cross_modal(), seed=6, n=4)
    assert one.indices_a == two.indices_a and one.lam == two.lam
    for m in one.modalities:
        assert torch.equal(one.modalities[m].mixed, two.modalities[m].mixed)
    assert one.indices_a != other.indices_a


def test_deferred_text_keeps_ids_and_reports_the_union_mask(synth):
    batch = preview_mix(synth, MixSpec(method="mixup"), seed=0, n=5)
    text = batch.modalities["text"]
    assert text.deferred and batch.deferred == ["text"] and text.op == "embedding_mixup"
    assert torch.equal(text.mixed, text.a)
    assert torch.equal(text.mask, (text.a != 0) | (text.b != 0))
    assert all(s == "a" for _, _, s in text.token_sources(0))


def test_concat_sources_and_unmixed_modalities(synth):
    batch = preview_mix(synth, MixSpec(method="mixgen"), seed=0, n=4)
    text = batch.modalities["text"]
    assert text.op == "concat" and batch.modalities["audio"].op is None
    assert torch.equal(batch.modalities["audio"].mixed, batch.modalities["audio"].a)
    own = int((text.a[0] != 0).sum())
    sources = [s for _, _, s in text.token_sources(0)]
    assert sources[:own] == ["a"] * own and set(sources[own:]) <= {"b"}


def test_service_renders_every_modality(synth):
    from app.schemas.datasets import PreviewRequest
    from app.services import previews

    request = PreviewRequest.model_validate({
        "method": "cross_modal", "n": 3, "seed": 1,
        "ops": {"image": "cutmix", "audio": "specmix", "text": "token_cutmix"}})
    batch = previews.compute(synth, request)
    for modality in synth.inputs:
        decode(previews.render(synth, batch, None, modality))
        decode(previews.render(synth, batch, 1, modality))
    assert red_pixels(decode(previews.render(synth, batch, None, "audio"))) > 0
    out = previews.describe(uuid.uuid4(), synth, request, batch, "http://h")
    assert set(out.image_urls) == set(synth.inputs)
    text = out.samples[0].modalities["text"]
    assert text.tokens and {t.source for t in text.tokens} <= {"a", "b"}
    assert all(not t.token.startswith("#") for t in text.tokens)  # words from the vocab
    values = out.samples[0].modalities["tabular"].values
    assert values is not None and len(values.a) == len(values.mixed) == 8


# ------------------------------------- previews say, per sample, what actually ran


def _what_ran(batch, i: int) -> str:  # type: ignore[no-untyped-def]
    """Check sample ``i``'s image against its reported op; return that op."""
    image = batch.modalities["image"]
    op, box = image.op_at(i), batch.boxes[i]
    a, b, mixed, lam = image.a[i], image.b[i], image.mixed[i], batch.lam[i]
    assert box == image.region_at(i)
    if op == "mixup":
        assert box is None
        assert torch.allclose(mixed, lam * a + (1 - lam) * b, atol=1e-6)
    elif op == "cutmix":
        y0, x0, y1, x1 = box
        assert y1 > y0 and x1 > x0
        inside = torch.zeros(a.shape[-2:], dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed, torch.where(inside, b, a))
        assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / inside.numel())
    else:  # λ = 1: nothing taken from the partner (an empty box), whatever was planned
        assert op is None and box is None and lam == 1.0 and torch.equal(mixed, a)
    return op or "not mixed"


@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_mixup_cutmix_preview_captions_and_outlines_what_each_sample_ran(synth, lam_mode):
    from app.schemas.datasets import PreviewRequest
    from app.services import previews

    seen = set()
    for seed in range(6):
        request = PreviewRequest.model_validate({"method": "mixup_cutmix", "n": 4,
                                                 "seed": seed, "lam_mode": lam_mode})
        batch = previews.compute(synth, request)
        image = batch.modalities["image"]
        out = previews.describe(uuid.uuid4(), synth, request, batch, "http://h")
        assert out.ops["image"] == "cutmix"  # the plan; each sample says what ran
        ran = [_what_ran(batch, i) for i in range(4)]
        if lam_mode == "batch":
            assert len(set(ran)) == 1
        seen.update(ran)
        for i, op in enumerate(ran):
            sample = out.samples[i]
            assert sample.modalities["image"].op == (None if op == "not mixed" else op)
            assert sample.box == sample.modalities["image"].region == batch.boxes[i]
            caption = previews._caption(synth, batch, i, image)
            assert caption.endswith(f"image: {op}")
            rows = [i]
            plain = render_mix_grid(image.a[rows], image.b[rows], image.mixed[rows], [caption])
            outlined = render_mix_grid(image.a[rows], image.b[rows], image.mixed[rows],
                                       [caption], [batch.boxes[i]])
            png = previews.render(synth, batch, i, "image")
            assert png == outlined
            assert (png == plain) == (op != "cutmix")  # outlined only when it was cut
    assert {"mixup", "cutmix"} <= seen


def test_preview_partners_are_never_the_sample_itself(synth):
    from app.services import previews

    for seed in range(10):
        batch = preview_mix(synth, MixSpec(method="mixup"), seed=seed, n=8)
        image = batch.modalities["image"]
        for i, (a, b) in enumerate(zip(batch.indices_a, batch.indices_b, strict=True)):
            assert a != b
            assert not previews._caption(synth, batch, i, image).startswith(f"#{a} + #{a}\n")


def test_multilabel_preview_smooths_each_class_towards_one_half():
    data = load_synthetic(num_samples=100, num_classes=5, seed=0, modalities=("tabular",),
                          labels_per_sample=3)
    batch = preview_mix(data, MixSpec(method="mixup", label_smoothing=0.2), seed=1, n=6)
    labels = data.labels.float()
    smoothed = labels * 0.8 + 0.1  # towards ½ per class, as the multilabel task trains
    lam = torch.tensor(batch.lam)[:, None]
    expected = (lam * smoothed[torch.tensor(batch.indices_a)]
                + (1 - lam) * smoothed[torch.tensor(batch.indices_b)])
    torch.testing.assert_close(batch.targets, expected)
