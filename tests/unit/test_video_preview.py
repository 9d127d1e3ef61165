"""Video previews: frame strips A | B | mixed, and every video op previewed as it ran."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.data.moving_digits import load_moving_digits
from app.ml.mixing import MixSpec
from app.ml.preview import preview_mix
from app.ml.render import (
    VIDEO_MAX_FRAMES,
    render_video_strips,
    video_frames_shown,
    video_strip_size,
)
from app.schemas.datasets import PreviewRequest
from app.services import previews

RED = np.array([230, 40, 40], dtype=np.uint8)


@pytest.fixture(scope="module")
def clips():  # type: ignore[no-untyped-def]
    return load_moving_digits(frames=6, side=16)


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def _scaled(clips, indices: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return clips.inputs["video"][indices].float() / 255.0


def test_strips_png_size_and_frames_shown() -> None:
    a = torch.rand(3, 5, 1, 16, 16)
    pixels = _decode(render_video_strips(a, a.flip(0), a, ["x"] * 3))
    width, height = video_strip_size(3, 5, 16, 16)
    assert pixels.shape == (height, width, 3)
    # one more sample adds one block of three strips
    assert video_strip_size(4, 5, 16, 16)[1] - height == (height - video_strip_size(0, 5, 16,
                                                                                    16)[1]) // 3
    assert video_frames_shown(5) == [0, 1, 2, 3, 4]
    long = video_frames_shown(100)
    assert len(long) == VIDEO_MAX_FRAMES and long[0] == 0 and long[-1] == 99


def test_mixup_preview_mixes_every_frame_with_one_lambda(clips) -> None:  # type: ignore[no-untyped-def]
    batch = preview_mix(clips, MixSpec(method="mixup", lam_mode="sample"), seed=3, n=4)
    video = batch.modalities["video"]
    assert video.kind == "video" and video.op == "mixup"
    a, b = _scaled(clips, batch.indices_a), _scaled(clips, batch.indices_b)
    assert torch.equal(video.a, a) and torch.equal(video.b, b)
    lam = torch.tensor(batch.lam).view(-1, 1, 1, 1, 1)
    assert torch.allclose(video.mixed, lam * a + (1 - lam) * b, atol=1e-6)


def test_cutmix_preview_cuts_the_same_box_on_every_frame(clips) -> None:  # type: ignore[no-untyped-def]
    batch = preview_mix(clips, MixSpec(method="cutmix", lam_mode="sample"), seed=5, n=4)
    video = batch.modalities["video"]
    assert video.op == "cutmix"
    cut = 0
    for i in range(4):
        box = video.region_at(i)
        if box is None:
            continue
        cut += 1
        y0, x0, y1, x1 = box
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        for t in range(6):
            frame, a, b = video.mixed[i, t, 0], video.a[i, t, 0], video.b[i, t, 0]
            assert torch.equal(frame[inside], b[inside]), (i, t)
            assert torch.equal(frame[~inside], a[~inside]), (i, t)
        assert batch.boxes is not None and batch.boxes[i] == box
    assert cut >= 2
    # the PNG outlines that box on every frame of the mix, and only there
    png = previews.render(clips, batch, sample=next(i for i in range(4)
                                                     if video.region_at(i) is not None))
    pixels = _decode(png)
    assert pixels.shape[:2] == video_strip_size(1, 6, 16, 16)[::-1]
    red_columns = np.flatnonzero((pixels == RED).all(axis=-1).any(axis=0))
    # one outline per frame: six separate runs of red columns
    runs = 1 + int((np.diff(red_columns) > 1).sum())
    assert runs == 6


def test_cross_modal_preview_mixes_video_and_audio_with_one_partner(clips) -> None:  # type: ignore[no-untyped-def]
    spec = MixSpec(method="cross_modal", lam_mode="sample",
                   ops={"video": "cutmix", "audio": "mixup"})
    batch = preview_mix(clips, spec, seed=7, n=4)
    video, audio = batch.modalities["video"], batch.modalities["audio"]
    assert video.op == "cutmix" and audio.op == "mixup"
    # the same partner for both modalities
    assert torch.equal(audio.b, clips.inputs["audio"][batch.indices_b])
    assert torch.equal(video.b, _scaled(clips, batch.indices_b))
    for i in range(4):
        box = video.region_at(i)
        lam = batch.lam[i]
        if box is not None:  # λ is the share of A's pixels left by the box
            y0, x0, y1, x1 = box
            assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256, abs=1e-6)
        assert torch.allclose(audio.mixed[i], lam * audio.a[i] + (1 - lam) * audio.b[i],
                              atol=1e-5)


def test_service_json_reports_video_frames_and_box(clips) -> None:  # type: ignore[no-untyped-def]
    import uuid

    request = PreviewRequest(method="cutmix", n=3, seed=2)
    batch = previews.compute(clips, request)
    out = previews.describe(uuid.uuid4(), clips, request, batch, "http://x")
    assert previews.default_modality(clips) == "video"
    for i, sample in enumerate(out.samples):
        video = sample.modalities["video"]
        assert video.kind == "video" and video.frames == 6
        assert video.region == batch.modalities["video"].region_at(i)
        assert "modality=video" in video.image_url
    _decode(previews.render(clips, batch))
