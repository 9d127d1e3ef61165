"""Unit tests for app.ml.mixing: mixup, cutmix, none, λ sampling and validation.

The reference formulas (timm's ``mixup_target`` and ``rand_bbox``) are re-derived
here from their definitions; timm itself is not imported.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ml.mixing import METHODS, MixSpec, draw_lam, mix, register_method, sample_beta

CPU = torch.device("cpu")
FAST = settings(max_examples=50, deadline=None)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
alphas = st.sampled_from([0.2, 0.4, 1.0, 2.0])
lam_modes = st.sampled_from(["batch", "sample"])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=gen(seed + 7919))


def labelled_images(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Sample i is the constant i + 1, so every pixel says which sample it came from."""
    return (torch.arange(n, dtype=torch.float32) + 1.0).view(n, 1, 1, 1).expand(n, c, h, w).clone()


def onehot(y: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(y, k).double()


def timm_smoothed(y: torch.Tensor, k: int, s: float) -> torch.Tensor:
    """timm's one_hot(target, on_value, off_value) with off = s/K, on = 1 - s + off."""
    off = s / k
    on = 1.0 - s + off
    out = torch.full((y.shape[0], k), off, dtype=torch.float64)
    out[torch.arange(y.shape[0]), y] = on
    return out


def expected_interp(x: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """lam * x + (1 - lam) * x[index], in float64."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam64 = lam.double().view(shape)
    x64 = x.double()
    return lam64 * x64 + (1.0 - lam64) * x64[index]


def assert_is_permutation(index: torch.Tensor, n: int) -> None:
    assert index.dtype in (torch.int64, torch.int32)
    assert sorted(index.tolist()) == list(range(n))


def rand_bbox_sides(lam: float, size: int) -> tuple[int, set[tuple[int, int]]]:
    """timm's rand_bbox along one axis, for a given λ: the cut length and every
    (start, end) a uniform integer centre in [0, size) can produce.

    ``mix`` works in float32, so the cut length is computed in float32 too.
    """
    cut_rat = np.sqrt(np.float32(1.0) - np.float32(lam), dtype=np.float32)
    cut = int(np.float32(size) * cut_rat)
    sides = {
        (int(np.clip(c - cut // 2, 0, size)), int(np.clip(c + cut // 2, 0, size)))
        for c in range(size)
    }
    return cut, sides


# --------------------------------------------------------------------------- mixup


@FAST
@given(n=st.integers(2, 8), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       k=st.integers(2, 6), alpha=alphas, lam_mode=lam_modes, seed=seeds)
def test_mixup_inputs_and_targets_follow_the_formula(n, c, h, w, k, alpha, lam_mode, seed):
    x = rand_images(n, c, h, w, seed)
    y = torch.randint(0, k, (n,), generator=gen(seed + 1))
    out = mix({"image": x}, y, MixSpec("mixup", alpha=alpha, lam_mode=lam_mode), gen(seed), k)

    assert out.method == "mixup"
    assert out.boxes is None
    assert out.lam.shape == (n,) and out.lam.dtype == torch.float32
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    assert_is_permutation(out.index, n)

    mixed = out.inputs["image"]
    assert mixed.shape == x.shape and mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.double(), expected_interp(x, out.lam, out.index),
                               atol=1e-6, rtol=1e-5)

    t = out.targets
    assert t.shape == (n, k)
    assert ((t >= 0) & (t <= 1 + 1e-6)).all()
    torch.testing.assert_close(t.sum(dim=1).double(), torch.ones(n, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    lam = out.lam.double()[:, None]
    expected = lam * onehot(y, k) + (1 - lam) * onehot(y[out.index], k)
    torch.testing.assert_close(t.double(), expected, atol=1e-6, rtol=0)


@FAST
@given(n=st.integers(2, 8), f=st.integers(1, 10), k=st.integers(2, 10),
       smoothing=st.sampled_from([0.0, 0.05, 0.1, 0.3]), alpha=alphas, lam_mode=lam_modes,
       seed=seeds)
def test_mixup_matches_timm_mixup_target_with_label_smoothing(n, f, k, smoothing, alpha,
                                                              lam_mode, seed):
    x = torch.randn((n, f), generator=gen(seed + 3))
    y = torch.randint(0, k, (n,), generator=gen(seed + 4))
    spec = MixSpec("mixup", alpha=alpha, lam_mode=lam_mode, label_smoothing=smoothing)
    out = mix({"tab": x}, y, spec, gen(seed), k)

    lam = out.lam.double()
    # timm: x * lam + x_partner * (1 - lam)
    expected_x = x.double() * lam[:, None] + x.double()[out.index] * (1 - lam[:, None])
    torch.testing.assert_close(out.inputs["tab"].double(), expected_x, atol=1e-5, rtol=1e-5)
    # timm: y1 * lam + y2 * (1 - lam), y = one_hot(target, on=1-s+s/K, off=s/K)
    expected_t = (lam[:, None] * timm_smoothed(y, k, smoothing)
                  + (1 - lam[:, None]) * timm_smoothed(y[out.index], k, smoothing))
    torch.testing.assert_close(out.targets.double(), expected_t, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.targets.sum(1).double(), torch.ones(n, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_label_smoothing_without_mixing_is_timm_smoothing():
    y = torch.tensor([0, 2, 1, 2])
    out = mix({"x": torch.zeros(4, 3)}, y, MixSpec("none", label_smoothing=0.3), gen(0), 3)
    torch.testing.assert_close(out.targets.double(), timm_smoothed(y, 3, 0.3))
    # on = 1 - 0.3 + 0.1, off = 0.1
    assert out.targets[0].tolist() == pytest.approx([0.8, 0.1, 0.1])


def test_mixup_with_known_lambda_and_partner_is_exact():
    # batch mode: one λ for the batch; check against hand-written numbers
    x = torch.tensor([[0.0], [10.0], [20.0]])
    y = torch.tensor([0, 1, 2])
    out = mix({"x": x}, y, MixSpec("mixup", alpha=1.0), gen(123), 3)
    lam = float(out.lam[0])
    for i, j in enumerate(out.index.tolist()):
        assert float(out.inputs["x"][i, 0]) == pytest.approx(lam * 10 * i + (1 - lam) * 10 * j,
                                                             abs=1e-5)
        row = [0.0, 0.0, 0.0]
        row[i] += lam
        row[j] += 1 - lam
        assert out.targets[i].tolist() == pytest.approx(row, abs=1e-6)


# -------------------------------------------------------------------- λ = 1 identity


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_method_none_passes_inputs_through(dtype):
    x = (torch.rand(5, 2, 4, 4) * 200).to(dtype)
    tab = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    out = mix({"image": x, "tab": tab}, y, MixSpec("none"), gen(0), 4)
    assert out.method == "none"
    assert torch.equal(out.inputs["image"], x) and out.inputs["image"].dtype == dtype
    assert torch.equal(out.inputs["tab"], tab)
    assert torch.equal(out.lam, torch.ones(5))
    assert torch.equal(out.index, torch.arange(5))
    assert out.boxes is None
    assert torch.equal(out.targets, F.one_hot(y, 4).float())


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_of_one_is_not_mixed(method, seed):
    x = torch.rand(1, 3, 5, 5)
    tab = torch.randn(1, 4)
    y = torch.tensor([2])
    out = mix({"image": x, "tab": tab}, y, MixSpec(method, alpha=0.5), gen(seed), 3)
    assert torch.equal(out.inputs["image"], x)
    assert torch.equal(out.inputs["tab"], tab)
    assert torch.equal(out.lam, torch.ones(1))
    assert torch.equal(out.index, torch.zeros(1, dtype=out.index.dtype))
    assert out.boxes is None
    assert torch.equal(out.targets, torch.tensor([[0.0, 0.0, 1.0]]))


# -------------------------------------------------------------------------- cutmix


def check_cutmix_boxes(x: torch.Tensor, out, h: int, w: int) -> None:
    """Pixels inside each box come from the partner, outside from the sample; λ is the
    share kept, counted both from the box and from the pixels that changed."""
    n = x.shape[0]
    boxes = out.boxes
    assert boxes is not None and boxes.shape == (n, 4)
    mixed = out.inputs["image"]
    for i in range(n):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
        j = int(out.index[i])
        expected = x[i].clone()
        expected[:, y0:y1, x0:x1] = x[j][:, y0:y1, x0:x1]
        assert torch.equal(mixed[i], expected)

        area = (y1 - y0) * (x1 - x0)
        kept = 1.0 - area / (h * w)
        assert float(out.lam[i]) == pytest.approx(kept, abs=1e-6)
        if j != i:
            # every sample is a distinct constant: count the copied cells directly
            copied = int((mixed[i] != x[i]).sum()) // x.shape[1]
            assert copied == area
            assert float(out.lam[i]) == pytest.approx(1.0 - copied / (h * w), abs=1e-6)


@FAST
@given(n=st.integers(2, 8), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       alpha=alphas, lam_mode=lam_modes, seed=seeds)
def test_cutmix_lam_is_share_of_pixels_kept(n, c, h, w, alpha, lam_mode, seed):
    x = labelled_images(n, c, h, w)
    y = torch.arange(n) % 3
    out = mix({"image": x}, y, MixSpec("cutmix", alpha=alpha, lam_mode=lam_mode), gen(seed), 3)
    assert out.method == "cutmix"
    assert_is_permutation(out.index, n)
    check_cutmix_boxes(x, out, h, w)
    lam = out.lam.double()[:, None]
    expected = lam * onehot(y, 3) + (1 - lam) * onehot(y[out.index], 3)
    torch.testing.assert_close(out.targets.double(), expected, atol=1e-6, rtol=0)
    if lam_mode == "batch":
        assert (out.boxes == out.boxes[0]).all()
        assert (out.lam == out.lam[0]).all()


@FAST
@given(n=st.integers(2, 8), h=st.integers(1, 16), w=st.integers(1, 16), alpha=alphas,
       lam_mode=lam_modes, seed=seeds)
def test_cutmix_boxes_follow_timm_rand_bbox(n, h, w, alpha, lam_mode, seed):
    """correct_lam=False reports the drawn λ; the boxes must be what timm's rand_bbox can
    produce for it; correct_lam=True (same seed) cuts the same boxes and reports
    1 - area / (H W)."""
    x = rand_images(n, 2, h, w, seed)
    y = torch.arange(n) % 4
    raw = mix({"image": x}, y, MixSpec("cutmix", alpha=alpha, lam_mode=lam_mode,
                                       correct_lam=False), gen(seed), 4)
    corr = mix({"image": x}, y, MixSpec("cutmix", alpha=alpha, lam_mode=lam_mode,
                                        correct_lam=True), gen(seed), 4)

    # the uncorrected λ is the Beta draw
    drawn = draw_lam(MixSpec("cutmix", alpha=alpha, lam_mode=lam_mode), n, gen(seed), CPU)
    assert torch.equal(raw.lam, drawn)
    assert torch.equal(raw.index, corr.index)
    assert torch.equal(raw.boxes, corr.boxes)
    assert torch.equal(raw.inputs["image"], corr.inputs["image"])

    for i in range(n):
        lam = float(raw.lam[i])
        y0, x0, y1, x1 = (int(v) for v in raw.boxes[i])
        if lam >= 1.0:
            assert (y0, x0, y1, x1) == (0, 0, 0, 0)
            continue
        cut_h, ys = rand_bbox_sides(lam, h)
        cut_w, xs = rand_bbox_sides(lam, w)
        assert (y0, y1) in ys, (lam, h, cut_h, y0, y1)
        assert (x0, x1) in xs, (lam, w, cut_w, x0, x1)
        assert y1 - y0 <= cut_h and x1 - x0 <= cut_w
        area = (y1 - y0) * (x1 - x0)
        assert float(corr.lam[i]) == pytest.approx(1.0 - area / (h * w), abs=1e-6)
        # timm's targets use the corrected λ
        lam_c = float(corr.lam[i])
        j = int(corr.index[i])
        row = torch.zeros(4, dtype=torch.float64)
        row[int(y[i])] += lam_c
        row[int(y[j])] += 1 - lam_c
        torch.testing.assert_close(corr.targets[i].double(), row, atol=1e-6, rtol=0)
        # the uncorrected run mixes its targets with the drawn λ
        row = torch.zeros(4, dtype=torch.float64)
        row[int(y[i])] += lam
        row[int(y[j])] += 1 - lam
        torch.testing.assert_close(raw.targets[i].double(), row, atol=1e-6, rtol=0)


def test_cutmix_uncorrected_lam_differs_from_area_when_box_is_clipped():
    # With many samples per-sample boxes get clipped at the border somewhere, so the
    # drawn λ (reported with correct_lam=False) is not the kept share there.
    n, h, w = 64, 8, 8
    x = labelled_images(n, 1, h, w)
    spec = MixSpec("cutmix", alpha=1.0, lam_mode="sample", correct_lam=False)
    out = mix({"image": x}, torch.zeros(n, dtype=torch.long), spec, gen(5), 2)
    area = ((out.boxes[:, 2] - out.boxes[:, 0]) * (out.boxes[:, 3] - out.boxes[:, 1])).double()
    kept = 1.0 - area / (h * w)
    assert not torch.allclose(out.lam.double(), kept, atol=1e-3)
    assert torch.equal(out.lam, draw_lam(spec, n, gen(5), CPU))


minmax_pairs = st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)).map(sorted).map(tuple)


@FAST
@given(n=st.integers(2, 8), h=st.integers(1, 20), w=st.integers(1, 20), minmax=minmax_pairs,
       lam_mode=lam_modes, correct_lam=st.booleans(), seed=seeds)
def test_cutmix_minmax_boxes_inside_image_with_bounded_sides(n, h, w, minmax, lam_mode,
                                                              correct_lam, seed):
    x = labelled_images(n, 2, h, w)
    spec = MixSpec("cutmix", alpha=1.0, lam_mode=lam_mode, cutmix_minmax=minmax,
                   correct_lam=correct_lam)
    out = mix({"image": x}, torch.arange(n) % 2, spec, gen(seed), 2)
    lo_h, hi_h = int(h * minmax[0]), int(h * minmax[1])
    lo_w, hi_w = int(w * minmax[0]), int(w * minmax[1])
    for i in range(n):
        y0, x0, y1, x1 = (int(v) for v in out.boxes[i])
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
        assert lo_h <= y1 - y0 <= hi_h, (h, minmax, y0, y1)
        assert lo_w <= x1 - x0 <= hi_w, (w, minmax, x0, x1)
    # with minmax the reported λ is always the kept share, whatever correct_lam says
    check_cutmix_boxes(x, out, h, w)


def test_cutmix_minmax_full_range_hits_both_ends():
    # sides are drawn uniformly in [int(H*min), int(H*max)] inclusive
    n, h = 400, 10
    spec = MixSpec("cutmix", lam_mode="sample", cutmix_minmax=(0.2, 0.5))
    out = mix({"image": torch.zeros(n, 1, h, h)}, torch.zeros(n, dtype=torch.long), spec,
              gen(0), 2)
    sides = set((out.boxes[:, 2] - out.boxes[:, 0]).tolist())
    assert sides == {2, 3, 4, 5}
    starts = set(out.boxes[:, 0].tolist())
    assert 0 in starts and max((out.boxes[:, 2]).tolist()) == h


def test_cutmix_minmax_always_cuts_a_box_when_mixing():
    n, h = 2000, 10
    spec = MixSpec("cutmix", alpha=0.05, lam_mode="sample", cutmix_minmax=(0.3, 0.6))
    out = mix({"image": torch.zeros(n, 1, h, h)}, torch.zeros(n, dtype=torch.long), spec,
              gen(0), 2)
    sides = out.boxes[:, 2] - out.boxes[:, 0]
    assert (sides >= 3).all()


def test_cutmix_needs_an_image_modality():
    with pytest.raises(ValueError, match="cutmix"):
        mix({"tab": torch.randn(4, 3)}, torch.arange(4), MixSpec("cutmix"), gen(0), 4)


def test_cutmix_cuts_each_image_modality_and_the_first_defines_lam():
    batch = {"a": torch.rand(4, 1, 6, 6), "b": torch.rand(4, 1, 5, 5)}
    out = mix(batch, torch.arange(4), MixSpec("cutmix", alpha=1.0, lam_mode="sample"),
              gen(0), 4)
    assert set(out.regions) == {"a", "b"}
    a = out.regions["a"]
    area = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).float()
    assert torch.allclose(out.lam, 1 - area / 36)
    assert torch.equal(out.boxes, a)
    b = out.regions["b"]
    inside = torch.zeros(4, 1, 5, 5, dtype=torch.bool)
    for i in range(4):
        inside[i, :, b[i, 0]:b[i, 2], b[i, 1]:b[i, 3]] = True
    expected = torch.where(inside, batch["b"][out.index], batch["b"])
    assert torch.equal(out.inputs["b"], expected)


@FAST
@given(n=st.integers(2, 8), h=st.integers(2, 10), f=st.integers(1, 6), alpha=alphas,
       lam_mode=lam_modes, seed=seeds)
def test_cutmix_interpolates_other_modalities_with_corrected_lam(n, h, f, alpha, lam_mode,
                                                                  seed):
    img = labelled_images(n, 3, h, h)
    tab = torch.randn((n, f), generator=gen(seed + 11))
    y = torch.arange(n) % 5
    out = mix({"image": img, "tab": tab}, y, MixSpec("cutmix", alpha=alpha, lam_mode=lam_mode),
              gen(seed), 5)
    check_cutmix_boxes(img, out, h, h)
    torch.testing.assert_close(out.inputs["tab"].double(),
                               expected_interp(tab, out.lam, out.index), atol=1e-5, rtol=1e-5)
    lam = out.lam.double()[:, None]
    expected_t = lam * onehot(y, 5) + (1 - lam) * onehot(y[out.index], 5)
    torch.testing.assert_close(out.targets.double(), expected_t, atol=1e-6, rtol=0)


def test_cutmix_cuts_every_image_modality_with_the_same_box():
    n, h = 6, 8
    a = labelled_images(n, 1, h, h)
    b = labelled_images(n, 2, h, h) * 100
    out = mix({"a": a, "b": b}, torch.arange(n), MixSpec("cutmix", lam_mode="sample"), gen(3), n)
    changed_a = out.inputs["a"][:, 0] != a[:, 0]
    changed_b = out.inputs["b"][:, 0] != b[:, 0]
    assert torch.equal(changed_a, changed_b)


# ------------------------------------------------------------- batch sizes and dtypes


@pytest.mark.parametrize("n", [3, 5, 7])
@pytest.mark.parametrize("method", ["mixup", "cutmix"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_odd_batch_sizes(n, method, lam_mode):
    x = labelled_images(n, 2, 6, 6)
    y = torch.arange(n) % 3
    out = mix({"image": x}, y, MixSpec(method, lam_mode=lam_mode), gen(n), 3)
    assert out.inputs["image"].shape == x.shape
    assert out.targets.shape == (n, 3)
    assert out.lam.shape == (n,)
    assert_is_permutation(out.index, n)
    if method == "mixup":
        torch.testing.assert_close(out.inputs["image"].double(),
                                   expected_interp(x, out.lam, out.index))
    else:
        check_cutmix_boxes(x, out, 6, 6)


def test_mixup_bfloat16_keeps_dtype_and_matches_formula():
    x = torch.rand(6, 2, 5, 5, generator=gen(1)).to(torch.bfloat16)
    out = mix({"image": x}, torch.arange(6) % 2, MixSpec("mixup", lam_mode="sample"), gen(2), 2)
    assert out.inputs["image"].dtype == torch.bfloat16
    ref = expected_interp(x, out.lam, out.index)
    # bf16 has 8 bits of mantissa: a few ulps on values in [0, 1]
    torch.testing.assert_close(out.inputs["image"].double(), ref, atol=2e-2, rtol=0)


def test_mixup_uint8_rounds_and_stays_in_range():
    x = torch.randint(0, 256, (8, 1, 6, 6), generator=gen(3), dtype=torch.uint8)
    x[0] = 255
    x[1] = 0
    out = mix({"image": x}, torch.arange(8) % 2, MixSpec("mixup", lam_mode="sample"), gen(4), 2)
    mixed = out.inputs["image"]
    assert mixed.dtype == torch.uint8
    ref = expected_interp(x, out.lam, out.index)
    # rounded, not truncated or wrapped: within half a level (plus float slack)
    assert (mixed.double() - ref).abs().max() <= 0.5 + 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_cutmix_preserves_dtype_and_copies_values_exactly(dtype):
    n, h = 5, 7
    x = labelled_images(n, 2, h, h).to(dtype)
    out = mix({"image": x}, torch.arange(n), MixSpec("cutmix", lam_mode="sample"), gen(9), n)
    assert out.inputs["image"].dtype == dtype
    check_cutmix_boxes(x, out, h, h)


@pytest.mark.parametrize("method", ["none", "mixup", "cutmix"])
def test_callers_tensors_are_not_mutated(method):
    img = torch.rand(6, 2, 5, 5, generator=gen(0))
    tab = torch.randn(6, 3, generator=gen(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    soft = F.one_hot(y, 3).float()
    copies = (img.clone(), tab.clone(), y.clone(), soft.clone())
    batch = {"image": img, "tab": tab}
    spec = MixSpec(method, lam_mode="sample", label_smoothing=0.1)
    out = mix(batch, y, spec, gen(2), 3)
    out2 = mix(batch, soft, spec, gen(2), 3)
    if method != "none":
        # the results are fresh tensors: writing into them must not reach the caller
        for o in (out, out2):
            for v in o.inputs.values():
                v.add_(1.0)
    assert torch.equal(img, copies[0])
    assert torch.equal(tab, copies[1])
    assert torch.equal(y, copies[2])
    assert torch.equal(soft, copies[3])
    assert set(batch) == {"image", "tab"}


def test_gradients_flow_through_mixup():
    n = 5
    x = torch.randn(n, 3, requires_grad=True)
    out = mix({"x": x}, torch.arange(n), MixSpec("mixup", lam_mode="sample"), gen(0), n)
    out.inputs["x"].sum().backward()
    assert x.grad is not None
    # d/dx_j sum_i (lam_i x_i + (1 - lam_i) x_index[i]) = lam_j + (1 - lam_{inv(j)})
    inv = torch.empty_like(out.index)
    inv[out.index] = torch.arange(n)
    lam = out.lam.detach()
    expected = (lam + (1 - lam[inv]))[:, None].expand(n, 3)
    torch.testing.assert_close(x.grad, expected)


def test_gradients_flow_through_cutmix():
    n, h = 4, 6
    x = torch.randn(n, 1, h, h, requires_grad=True)
    out = mix({"image": x}, torch.arange(n), MixSpec("cutmix", lam_mode="sample"), gen(1), n)
    out.inputs["image"].sum().backward()
    # each pixel of x_j is used once outside j's box and once inside the box of whoever
    # took j as partner
    mask = torch.zeros(n, 1, h, h)
    for i, (y0, x0, y1, x1) in enumerate(out.boxes.tolist()):
        mask[i, :, y0:y1, x0:x1] = 1
    inv = torch.empty_like(out.index)
    inv[out.index] = torch.arange(n)
    expected = (1 - mask) + mask[inv]
    torch.testing.assert_close(x.grad, expected)


# ------------------------------------------------------------------- determinism / modes


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_same_seed_same_result_different_seed_differs(method, lam_mode):
    x = rand_images(8, 2, 8, 8, 0)
    y = torch.arange(8) % 3
    spec = MixSpec(method, lam_mode=lam_mode, prob=0.9)
    a = mix({"image": x}, y, spec, gen(42), 3)
    b = mix({"image": x}, y, spec, gen(42), 3)
    assert torch.equal(a.inputs["image"], b.inputs["image"])
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.lam, b.lam)
    assert torch.equal(a.index, b.index)
    if method == "cutmix":
        assert torch.equal(a.boxes, b.boxes)
    else:
        assert a.boxes is None and b.boxes is None

    c = mix({"image": x}, y, spec, gen(43), 3)
    assert not (torch.equal(a.lam, c.lam) and torch.equal(a.index, c.index))
    assert not torch.equal(a.inputs["image"], c.inputs["image"])


def test_generator_state_advances_between_calls():
    g = gen(0)
    x = rand_images(8, 1, 4, 4, 0)
    a = mix({"image": x}, torch.arange(8), MixSpec("mixup"), g, 8)
    b = mix({"image": x}, torch.arange(8), MixSpec("mixup"), g, 8)
    assert not torch.equal(a.lam, b.lam)


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_lam_mode_batch_shares_lambda(method):
    out = mix({"image": rand_images(16, 1, 8, 8, 0)}, torch.arange(16) % 2,
              MixSpec(method, lam_mode="batch"), gen(3), 2)
    assert (out.lam == out.lam[0]).all()
    assert float(out.lam[0]) < 1.0


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_lam_mode_sample_varies_lambda(method):
    out = mix({"image": rand_images(16, 1, 16, 16, 0)}, torch.arange(16) % 2,
              MixSpec(method, lam_mode="sample"), gen(3), 2)
    assert len(set(out.lam.tolist())) > 8


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_prob_zero_never_mixes(method, lam_mode):
    x = rand_images(8, 2, 6, 6, 1)
    tab = torch.randn(8, 3)
    y = torch.arange(8) % 4
    out = mix({"image": x, "tab": tab}, y, MixSpec(method, lam_mode=lam_mode, prob=0.0),
              gen(0), 4)
    assert torch.equal(out.lam, torch.ones(8))
    assert torch.equal(out.inputs["image"], x)
    assert torch.equal(out.inputs["tab"], tab)
    assert torch.equal(out.targets, F.one_hot(y, 4).float())
    if method == "cutmix":
        assert (out.boxes == 0).all()


def test_prob_half_in_sample_mode_mixes_some_samples():
    n = 200
    x = labelled_images(n, 1, 6, 6)
    out = mix({"image": x}, torch.zeros(n, dtype=torch.long),
              MixSpec("mixup", lam_mode="sample", prob=0.5), gen(0), 2)
    unmixed = out.lam == 1.0
    assert 60 < int(unmixed.sum()) < 140
    assert torch.equal(out.inputs["image"][unmixed], x[unmixed])


# ------------------------------------------------------------------------- targets


@FAST
@given(n=st.integers(2, 8), k=st.integers(2, 6), method=st.sampled_from(["mixup", "cutmix"]),
       smoothing=st.sampled_from([0.0, 0.1]), seed=seeds)
def test_one_hot_targets_are_mixed_like_indices(n, k, method, smoothing, seed):
    x = rand_images(n, 1, 6, 6, seed)
    y = torch.randint(0, k, (n,), generator=gen(seed + 5))
    spec = MixSpec(method, lam_mode="sample", label_smoothing=smoothing)
    by_index = mix({"image": x}, y, spec, gen(seed), k)
    by_onehot = mix({"image": x}, F.one_hot(y, k).float(), spec, gen(seed), k)
    assert torch.equal(by_index.inputs["image"], by_onehot.inputs["image"])
    torch.testing.assert_close(by_index.targets, by_onehot.targets, atol=1e-7, rtol=0)


@FAST
@given(n=st.integers(2, 8), k=st.integers(2, 6), seed=seeds)
def test_soft_targets_are_mixed_linearly(n, k, seed):
    soft = torch.rand((n, k), generator=gen(seed + 9)).softmax(dim=1)
    out = mix({"x": torch.randn(n, 2)}, soft, MixSpec("mixup", lam_mode="sample"), gen(seed), k)
    lam = out.lam.double()[:, None]
    expected = lam * soft.double() + (1 - lam) * soft.double()[out.index]
    torch.testing.assert_close(out.targets.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.targets.sum(1).double(), torch.ones(n, dtype=torch.float64),
                               atol=1e-6, rtol=0)


# -------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_sample_beta_moments(alpha):
    draws = sample_beta(alpha, 100_000, gen(int(alpha * 10)), CPU)
    assert draws.shape == (100_000,) and draws.dtype == torch.float32
    assert torch.isfinite(draws).all()
    assert ((draws >= 0) & (draws <= 1)).all()
    d = draws.double()
    assert float(d.mean()) == pytest.approx(0.5, abs=0.01)
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))
    assert float(d.var()) == pytest.approx(var, rel=0.10)
    # a symmetric distribution: the median is 1/2 as well
    assert float(d.median()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 4.0])
def test_sample_beta_cdf_matches_closed_form_quantiles(alpha):
    # P(X <= 1/4) for Beta(a, a), by numerical integration of the density
    a = alpha
    log_b = 2 * math.lgamma(a) - math.lgamma(2 * a)
    grid = np.linspace(0.0, 0.25, 200_001)[1:]
    dens = np.exp((a - 1) * (np.log(grid) + np.log1p(-grid)) - log_b)
    # the density has an integrable singularity at 0 when a < 1: integrate x^(a-1) exactly
    # on the first cell and use the trapezoid rule on the rest
    first = grid[0]
    head = first**a / a * (1 - first) ** (a - 1) / math.exp(log_b)
    cdf = head + np.trapezoid(dens, grid)
    draws = sample_beta(alpha, 100_000, gen(1), CPU).double()
    assert float((draws <= 0.25).double().mean()) == pytest.approx(cdf, abs=0.01)


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 4.0])
def test_sample_beta_values_finite_and_in_closed_unit_interval(alpha):
    draws = sample_beta(alpha, 100_000, gen(0), CPU)
    assert torch.isfinite(draws).all()
    assert ((draws >= 0) & (draws <= 1)).all()
    assert float(draws.double().mean()) == pytest.approx(0.5, abs=0.01)
    if alpha >= 1.0:
        # no saturation in float32 away from tiny alpha
        assert ((draws > 0) & (draws < 1)).all()


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_sample_beta_open_interval_for_small_alpha(alpha):
    draws = sample_beta(alpha, 100_000, gen(0), CPU)
    assert ((draws > 0) & (draws < 1)).all()


def test_sample_beta_is_deterministic_per_generator():
    a = sample_beta(0.4, 1000, gen(7), CPU)
    b = sample_beta(0.4, 1000, gen(7), CPU)
    c = sample_beta(0.4, 1000, gen(8), CPU)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------ validation


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="unknown mixing method"):
        mix({"x": torch.randn(4, 2)}, torch.arange(4), MixSpec("mosaic"), gen(0), 4)


@pytest.mark.parametrize("kwargs", [
    {"alpha": 0.0},
    {"alpha": -1.0},
    {"prob": -0.1},
    {"prob": 1.5},
    {"label_smoothing": 1.0},
    {"label_smoothing": -0.1},
    {"lam_mode": "elementwise"},
    {"cutmix_minmax": (0.0, 0.5)},
    {"cutmix_minmax": (0.6, 0.5)},
    {"cutmix_minmax": (0.5, 1.1)},
])
def test_invalid_spec_raises(kwargs):
    with pytest.raises(ValueError):
        MixSpec(**kwargs)


def test_mismatched_batch_dimensions_raise():
    with pytest.raises(ValueError, match="batch dimension"):
        mix({"a": torch.randn(4, 2), "b": torch.randn(5, 2)}, torch.arange(4),
            MixSpec("mixup"), gen(0), 4)
    with pytest.raises(ValueError, match="batch dimension"):
        mix({"a": torch.randn(4, 2)}, torch.arange(3), MixSpec("mixup"), gen(0), 4)
    with pytest.raises(ValueError, match="batch dimension"):
        mix({"a": torch.randn(4, 1, 3, 3)}, torch.zeros(5, 4), MixSpec("cutmix"), gen(0), 4)


def test_empty_batch_dict_raises():
    with pytest.raises(ValueError):
        mix({}, torch.arange(4), MixSpec("mixup"), gen(0), 4)


def test_register_method_rejects_duplicates():
    assert {"none", "mixup", "cutmix"} <= set(METHODS)
    with pytest.raises(ValueError, match="already registered"):
        register_method("mixup", METHODS["mixup"])


def test_permute_pairing_never_pairs_a_sample_with_itself() -> None:
    from app.ml.mixing.sampling import sample_partners

    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 8, 129):
        for _ in range(50):
            index = sample_partners(n, gen, torch.device("cpu"))
            assert sorted(index.tolist()) == list(range(n))  # a permutation
            assert not (index == torch.arange(n)).any()  # without fixed points
    # and not one fixed cycle: the order is drawn anew each call
    draws = {tuple(sample_partners(8, gen, torch.device("cpu")).tolist()) for _ in range(20)}
    assert len(draws) > 15
    assert sample_partners(1, gen, torch.device("cpu")).tolist() == [0]


def test_previews_show_no_sample_mixed_with_itself() -> None:
    from app.ml.data import load_digits
    from app.ml.mixing import MixSpec, mix

    images = load_digits().inputs["image"][:8].float()
    labels = torch.arange(8)
    for seed in range(20):
        mixed = mix({"image": images}, labels, MixSpec("mixup"),
                    torch.Generator().manual_seed(seed), 10)
        assert not (mixed.index == torch.arange(8)).any(), seed
