"""Property tests for every mixing method of ``app.ml.mixing``, on every modality.

``test_mixing.py`` covers mixup and cutmix on images, λ sampling and spec validation;
this file covers the rest of the library: pairing (permute / flip / roll, ``pair`` λ
mode), ``cross_modal`` on image + audio + tabular + text with per-modality ops,
text (embedding_mixup, token_cutmix, MixGen's concatenation), audio (specmix,
spec_cutmix, waveform mixup), ``mixup_cutmix``, ``manifold_mixup`` with ``SmallCNN``,
label handling, ``off_epoch``, and, for every method: batch of one, odd batches,
dtypes, devices, no mutation, gradients and determinism.

Expected values are re-derived from the definitions (boxes, bands and spans become
masks by slicing, MixGen's text is rebuilt token by token from the unmixed batch);
``draw_lam`` is only used to replay the λ a seed draws.
"""

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.ml.mixing import (
    MODALITY_OPS,
    Mixed,
    MixSpec,
    draw_lam,
    embedding_mixup,
    mix,
    smooth_targets,
)
from app.ml.mixing.registry import METHODS, PlanRequest
from app.ml.mixing.sampling import sample_partners
from app.ml.mixing.text import PAD_ID
from app.ml.models.cnn import SmallCNN
from app.ml.tasks import CLASSIFICATION, MULTILABEL

CPU = torch.device("cpu")
FAST = settings(max_examples=40, deadline=None)

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# (device, float dtype) for the tests that run on every device: bf16 everywhere, fp32 too;
# the CUDA ones are marked (pytest -m cuda, benchmarks/gpu/run.sh)
DEVICE_DTYPES = [pytest.param(d, dt, marks=(pytest.mark.cuda, NEEDS_CUDA) if d == "cuda" else ())
                 for d in ("cpu", "cuda") for dt in (torch.bfloat16, torch.float32)]

seeds = st.integers(min_value=0, max_value=2**31 - 1)
alphas = st.sampled_from([0.2, 0.4, 1.0, 2.0])
all_lam_modes = st.sampled_from(["batch", "sample", "pair"])
dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.uint8])

REGION_OPS = {name for name, op in MODALITY_OPS.items() if op.region}

# Every method (and the interesting cross_modal op choices) with the kwargs of its spec.
METHOD_SPECS: dict[str, dict] = {
    "none": {"method": "none"},
    "mixup": {"method": "mixup"},
    "cutmix": {"method": "cutmix"},
    "mixup_cutmix": {"method": "mixup_cutmix", "switch_prob": 0.5},
    "cross_modal": {"method": "cross_modal"},
    "cross_modal_regions": {"method": "cross_modal",
                            "ops": {"image": "cutmix", "audio": "specmix",
                                    "text": "token_cutmix"}},
    "cross_modal_spec_cutmix": {"method": "cross_modal",
                                "ops": {"audio": "spec_cutmix", "text": "token_cutmix"}},
    "manifold_mixup": {"method": "manifold_mixup"},
    "mixgen": {"method": "mixgen"},
}
METHOD_NAMES = list(METHOD_SPECS)


def method_spec(name: str, **overrides) -> MixSpec:
    return MixSpec(**{**METHOD_SPECS[name], **overrides})


# ----------------------------------------------------------------------------- helpers


def gen(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def labelled(n: int, shape: tuple[int, ...], dtype: torch.dtype,
             g: torch.Generator) -> torch.Tensor:
    """(n, *shape): sample i is i + 1 plus noise in [0, 0.5) (float, scaled by 1/16) or
    20 (i + 1) plus 0..9 (uint8), so every cell of every sample differs from every cell
    of every other sample, in any of the dtypes used here."""
    base = torch.arange(1, n + 1, dtype=torch.float32).view(n, *([1] * len(shape)))
    noise = torch.rand((n, *shape), generator=g)
    if dtype == torch.uint8:
        assert n <= 12
        return (base * 20 + (noise * 10).floor()).to(torch.uint8)
    return ((base + 0.5 * noise) / 16).to(dtype)


def make_text(n: int, width: int, g: torch.Generator) -> torch.Tensor:
    """Token ids (n, width) in 1..49, left-aligned, right-padded with PAD_ID; any length
    from 0 (all padding) to width."""
    lens = torch.randint(0, width + 1, (n,), generator=g)
    tokens = torch.randint(1, 50, (n, width), generator=g)
    pos = torch.arange(width)
    return torch.where(pos[None, :] < lens[:, None], tokens, torch.full_like(tokens, PAD_ID))


def make_batch(n: int, seed: int, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", c: int = 3, h: int = 5, w: int = 4,
               f: int = 4, t: int = 6, d: int = 3, width: int = 6) -> dict[str, torch.Tensor]:
    """image (n, c, h, w), audio spectrogram (n, 1, f, t), tabular (n, d), text (n, width)."""
    g = torch.Generator().manual_seed(seed)
    tab_dtype = torch.float32 if dtype == torch.uint8 else dtype
    batch = {
        "image": labelled(n, (c, h, w), dtype, g),
        "audio": labelled(n, (1, f, t), dtype, g),
        "tabular": torch.randn((n, d), generator=g).to(tab_dtype),
        "text": make_text(n, width, g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    if dtype == torch.bfloat16:
        return {"atol": 2e-2, "rtol": 2e-2}
    return {"atol": 1e-5, "rtol": 1e-5}


def assert_interpolated(y: torch.Tensor, x: torch.Tensor, lam: torch.Tensor,
                        index: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """y == lam x + (1 - lam) x[index] (computed in float64), up to the dtype's precision;
    only on ``rows`` (a bool mask over the batch) when given."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam64 = lam.double().cpu().view(shape)
    x64 = x.double().cpu()
    ref = lam64 * x64 + (1 - lam64) * x64[index.cpu()]
    if rows is not None:
        y, ref = y.cpu()[rows], ref[rows]
    if ref.numel() == 0:
        return
    if x.dtype == torch.uint8:
        assert (y.double().cpu() - ref).abs().max() <= 0.5 + 1e-3
    else:
        torch.testing.assert_close(y.double().cpu(), ref, **tolerance(x.dtype))


def assert_is_permutation(index: torch.Tensor, n: int) -> None:
    assert index.dtype in (torch.int64, torch.int32)
    assert sorted(index.tolist()) == list(range(n))


def dense_targets(y: torch.Tensor, k: int, smoothing: float = 0.0) -> torch.Tensor:
    dense = F.one_hot(y.long().cpu(), k).double() if y.dim() == 1 else y.double().cpu()
    return dense * (1 - smoothing) + smoothing / dense.shape[1]


def assert_targets_mixed(out: Mixed, dense: torch.Tensor) -> None:
    lam = out.lam.double().cpu()[:, None]
    expected = lam * dense + (1 - lam) * dense[out.index.cpu()]
    torch.testing.assert_close(out.targets.double().cpu(), expected, atol=1e-6, rtol=0)


def box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, h, w) bool from boxes (y0, x0, y1, x1), half-open, by slicing."""
    mask = torch.zeros(boxes.shape[0], h, w, dtype=torch.bool)
    for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w, (y0, x0, y1, x1, h, w)
        mask[i, y0:y1, x0:x1] = True
    return mask


def band_mask(bands: torch.Tensor, f: int, t: int) -> torch.Tensor:
    """(n, f, t) bool from specmix regions (f0, f1, t0, t1): a frequency band or a time band."""
    mask = torch.zeros(bands.shape[0], f, t, dtype=torch.bool)
    for i, (f0, f1, t0, t1) in enumerate(bands.tolist()):
        assert 0 <= f0 <= f1 <= f and 0 <= t0 <= t1 <= t, (f0, f1, t0, t1, f, t)
        mask[i, f0:f1, :] = True
        mask[i, :, t0:t1] = True
    return mask


def span_mask(spans: torch.Tensor, width: int) -> torch.Tensor:
    mask = torch.zeros(spans.shape[0], width, dtype=torch.bool)
    for i, (s, e) in enumerate(spans.tolist()):
        assert 0 <= s <= e <= width, (s, e, width)
        mask[i, s:e] = True
    return mask


def nonpad_lengths(ids: torch.Tensor) -> torch.Tensor:
    return (ids.cpu() != PAD_ID).sum(dim=1)


def check_token_cutmix(y: torch.Tensor, x: torch.Tensor, index: torch.Tensor,
                       regions: torch.Tensor) -> torch.Tensor:
    """A's positions [start, end) hold B's real tokens [b, b + end - start); the rest is
    A's own; the span lies in A's content and B's. Returns the share of A kept."""
    x, y, index, regions = x.cpu(), y.cpu(), index.cpu(), regions.cpu()
    len_a, len_b = nonpad_lengths(x), nonpad_lengths(x)[index]
    for i, (s, e, b) in enumerate(regions.tolist()):
        j, cut = int(index[i]), e - s
        assert 0 <= s <= e <= max(int(len_a[i]), 1) and b >= 0 and b + cut <= len_b[i]
        expected = x[i].clone()
        expected[s:e] = x[j, b:b + cut]
        assert torch.equal(y[i], expected), (i, y[i], expected)
    return 1 - (regions[:, 1] - regions[:, 0]).double() / len_a.clamp_min(1).double()


def assert_cells_from_partner(y: torch.Tensor, x: torch.Tensor, index: torch.Tensor,
                              mask: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """y equals the partner's cells where ``mask`` (n, *last dims) is set, its own elsewhere
    (only on ``rows`` when given). ``mask`` broadcasts over the dims in between."""
    x, y, index = x.cpu(), y.cpu(), index.cpu()
    m = mask.view(mask.shape[0], *([1] * (x.dim() - mask.dim())), *mask.shape[1:])
    expected = torch.where(m, x[index], x)
    if rows is not None:
        y, expected = y[rows], expected[rows]
    assert torch.equal(y, expected)


def count_taken(y: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cells (over the last two dims) where the output is the partner's and not the
    sample's own, every channel agreeing; needs inputs whose samples all differ."""
    x, y, index = x.cpu(), y.cpu(), index.cpu()
    taken = (y == x[index]) & (y != x)
    return taken.flatten(1, -3).all(dim=1) if x.dim() > 3 else taken


def assert_union_mask(mask: torch.Tensor, ids: torch.Tensor, lam: torch.Tensor,
                      index: torch.Tensor) -> None:
    """embedding_mixup's attention mask: the union of the pair's masks for mixed samples.
    For unmixed ones (λ = 1) only bounds are checked here; what it should be is pinned by
    test_embedding_mixup_mask_is_unchanged_for_unmixed_samples (a known bug)."""
    mask, lam, index = mask.cpu(), lam.cpu(), index.cpu()
    own = ids.cpu() != PAD_ID
    union = own | own[index]
    mixed = lam < 1
    assert torch.equal(mask[mixed], union[mixed])
    assert (mask[~mixed] >= own[~mixed]).all() and (mask[~mixed] <= union[~mixed]).all()


def concat_reference(ids: torch.Tensor, index: torch.Tensor,
                     lam: torch.Tensor | None = None) -> torch.Tensor:
    """MixGen's text: own tokens then the partner's, truncated to the width, from the
    unmixed ids; samples with λ = 1 (when given) are not mixed."""
    ids, index = ids.cpu(), index.cpu()
    n, width = ids.shape
    rows = []
    for i in range(n):
        if lam is not None and float(lam[i]) >= 1.0:
            rows.append(ids[i].tolist())
            continue
        own = [v for v in ids[i].tolist() if v != PAD_ID]
        other = [v for v in ids[int(index[i])].tolist() if v != PAD_ID]
        row = (own + other)[:width]
        rows.append(row + [PAD_ID] * (width - len(row)))
    return torch.tensor(rows, dtype=ids.dtype)


def check_mixed(batch: dict[str, torch.Tensor], dense: torch.Tensor, out: Mixed,
                spec: MixSpec) -> None:
    """Everything ``out`` says is true of ``batch``: each modality is its op applied with
    the reported λ and partner, the first region op's kept share is λ, the targets are
    λ·y + (1 − λ)·y[index]."""
    first = next(iter(batch.values()))
    n, device = first.shape[0], first.device
    lam, index = out.lam.cpu(), out.index.cpu()
    assert out.lam.shape == (n,) and out.lam.dtype == torch.float32
    assert out.lam.device == device and out.index.device == device
    assert out.targets.device == device
    assert_is_permutation(index, n)
    assert ((lam >= 0) & (lam <= 1)).all()
    assert_targets_mixed(out, dense)
    t = out.targets.double().cpu()
    if dense.sum(1).sub(1).abs().max() < 1e-9:
        torch.testing.assert_close(t.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6,
                                   rtol=0)
        assert ((t >= -1e-7) & (t <= 1 + 1e-6)).all()

    region_order = [m for m, op in out.ops.items() if op in REGION_OPS]
    for m, x in batch.items():
        y = out.inputs[m]
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, m
        op = out.ops.get(m)
        kept = None
        rows = torch.ones(n, dtype=torch.bool)  # where kept is defined by the region
        if op is None:
            assert torch.equal(y, x), m
            continue
        if op == "mixup":
            assert_interpolated(y, x, lam, index)
        elif op in ("cutmix", "spec_cutmix"):
            h, w = x.shape[-2:]
            region = out.regions[m].cpu()
            mask = box_mask(region, h, w)
            area = mask.flatten(1).sum(1)
            if out.method == "mixup_cutmix":
                # samples for which mixup was chosen have no box and are interpolated
                rows = area > 0
                assert_interpolated(y, x, lam, index, rows=~rows)
            assert_cells_from_partner(y, x, index, mask, rows=rows)
            kept = 1 - area.double() / (h * w)
        elif op == "specmix":
            fr, tm = x.shape[-2:]
            mask = band_mask(out.regions[m].cpu(), fr, tm)
            assert_cells_from_partner(y, x, index, mask)
            kept = 1 - mask.flatten(1).double().mean(1)
        elif op == "token_cutmix":
            kept = check_token_cutmix(y, x, index, out.regions[m])
        elif op == "embedding_mixup":
            assert torch.equal(y, x)
            assert m in out.deferred
            assert_union_mask(out.masks[m], x, lam, index)
        elif op == "concat":
            assert torch.equal(y.cpu(), concat_reference(x, index, lam))
            assert torch.equal(out.masks[m].cpu(), y.cpu() != PAD_ID)
        else:  # pragma: no cover - a new op needs a check here
            raise AssertionError(f"no check for op {op!r}")
        if kept is not None and m == region_order[0] and (
                spec.correct_lam or op != "cutmix"):
            torch.testing.assert_close(lam[rows].double(), kept[rows], atol=1e-6, rtol=0)

    assert set(out.deferred) == {m for m, op in out.ops.items() if op == "embedding_mixup"}
    image_regions = [m for m in out.regions if batch[m].dim() >= 4 and m.startswith("image")]
    if image_regions:
        assert torch.equal(out.boxes, out.regions[image_regions[0]])
    else:
        assert out.boxes is None


def snapshot(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in batch.items()}


def assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_mixed(a: Mixed, b: Mixed) -> None:
    assert_same_batch(a.inputs, b.inputs)
    for name in ("targets", "lam", "index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.boxes is None) == (b.boxes is None)
    if a.boxes is not None:
        assert torch.equal(a.boxes, b.boxes)
    assert_same_batch(a.regions, b.regions)
    assert_same_batch(a.masks, b.masks)
    assert (a.ops, a.deferred, a.layer, a.method) == (b.ops, b.deferred, b.layer, b.method)
    assert_same_batch(a.op_mask, b.op_mask)
    assert a.fallback_ops == b.fallback_ops


# ------------------------------------------------------------------- every method, generic


@pytest.mark.parametrize("method", METHOD_NAMES)
@FAST
@given(n=st.integers(1, 7), lam_mode=all_lam_modes,
       pairing=st.sampled_from(["permute", "flip", "roll"]), prob=st.sampled_from([1.0, 0.5]),
       dtype=dtypes, h=st.integers(1, 6), w=st.integers(1, 6), width=st.integers(1, 7),
       seed=seeds)
def test_every_method_reports_what_it_did(method, n, lam_mode, pairing, prob, dtype, h, w,
                                          width, seed):
    """Output = the op's formula for the reported λ and partner, for every modality;
    targets are the λ-mixture and rows sum to 1; nothing of the caller's is written."""
    assume(not (lam_mode == "pair" and pairing == "roll"))
    batch = make_batch(n, seed, dtype=dtype, h=h, w=w, f=w, t=h + 1, width=width)
    before = snapshot(batch)
    y = torch.randint(0, 4, (n,), generator=gen(seed + 1))
    spec = method_spec(method, lam_mode=lam_mode, pairing=pairing, prob=prob)
    out = mix(batch, y, spec, gen(seed), 4)
    assert out.method == spec.method
    assert_same_batch(batch, before)
    if n == 1 or method == "none":
        assert torch.equal(out.lam, torch.ones(n))
        assert torch.equal(out.index, torch.arange(n))
        assert out.ops == {} and out.layer is None and out.boxes is None
        assert_same_batch(out.inputs, batch)
        assert torch.equal(out.targets, F.one_hot(y, 4).float())
        return
    check_mixed(batch, dense_targets(y, 4), out, spec)
    if method == "mixgen":
        # the fixed weight for every mixed sample; λ = 1 for a sample that is its own
        # partner (also pinned by test_mixgen_prob_zero_… and test_mixgen_self_paired_…)
        assert ((out.lam == spec.mixgen_lam) | (out.lam == 1)).all()
        if prob == 1:
            own = out.index == torch.arange(n)
            assert (out.lam[~own] == spec.mixgen_lam).all() and (out.lam[own] == 1).all()
    if method == "manifold_mixup":
        assert out.ops == {} and out.layer in spec.manifold_layers
        assert_same_batch(out.inputs, batch)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_batch_of_one_is_returned_unmixed(method, dtype):
    batch = make_batch(1, 0, dtype=dtype)
    y = torch.tensor([[0.2, 0.8, 0.0]])
    out = mix(batch, y, method_spec(method), gen(0), 3)
    assert_same_batch(out.inputs, batch)
    assert torch.equal(out.lam, torch.ones(1))
    assert torch.equal(out.index, torch.zeros(1, dtype=out.index.dtype))
    assert torch.equal(out.targets, y)
    assert out.boxes is None and out.layer is None and out.deferred == ()
    assert out.regions == {} and out.masks == {}


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("n", [3, 5, 7])
@pytest.mark.parametrize("lam_mode", ["batch", "sample", "pair"])
def test_odd_batches(method, n, lam_mode):
    batch = make_batch(n, n)
    y = torch.arange(n) % 3
    spec = method_spec(method, lam_mode=lam_mode)
    out = mix(batch, y, spec, gen(n), 3)
    check_mixed(batch, dense_targets(y, 3), out, spec)
    if lam_mode == "pair" and method != "none":
        # one sample of an odd batch is its own partner, and is not mixed
        alone = (out.index == torch.arange(n)).nonzero().flatten().tolist()
        assert len(alone) == 1
        if method != "mixgen":  # see test_mixgen_self_paired_sample_is_not_mixed
            assert float(out.lam[alone[0]]) == 1.0


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_dtypes_are_preserved(method, dtype):
    batch = make_batch(6, 1, dtype=dtype)
    out = mix(batch, torch.arange(6) % 2, method_spec(method, lam_mode="sample"), gen(1), 2)
    for k, v in batch.items():
        assert out.inputs[k].dtype == v.dtype, k
        assert out.inputs[k].shape == v.shape, k
    assert out.targets.dtype == torch.float32 and out.lam.dtype == torch.float32


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_callers_tensors_are_never_written(method):
    batch = make_batch(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    soft = F.one_hot(y, 3).float()
    multi = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]],
                         dtype=torch.float32)
    copies = snapshot({**batch, "y": y, "soft": soft, "multi": multi})
    spec = method_spec(method, lam_mode="sample", label_smoothing=0.1)
    for targets in (y, soft, multi):
        out = mix(batch, targets, spec, gen(3), 3)
        # what the ops computed is a fresh tensor: writing into it cannot reach the caller
        for m in out.ops:
            if m not in out.deferred:
                out.inputs[m].add_(1)
        out.targets.add_(1)
        out.lam.add_(1)
    assert_same_batch({**batch, "y": y, "soft": soft, "multi": multi}, copies)
    assert list(batch) == ["image", "audio", "tabular", "text"]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_same_seed_same_result(method):
    batch = make_batch(8, 4)
    y = torch.arange(8) % 3
    spec = method_spec(method, lam_mode="sample", prob=0.8)
    a = mix(batch, y, spec, gen(42), 3)
    b = mix(batch, y, spec, gen(42), 3)
    assert_same_mixed(a, b)
    if method == "none":
        return
    others = [mix(batch, y, spec, gen(s), 3) for s in (43, 44, 45)]
    assert any(not (torch.equal(a.lam, o.lam) and torch.equal(a.index, o.index)
                    and a.layer == o.layer) for o in others)


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "mixgen"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample", "pair"])
def test_prob_zero_is_the_identity(method, lam_mode):
    """λ = 1 everywhere: every modality comes back as it was, targets unmixed, no region."""
    batch = make_batch(6, 5)
    y = torch.arange(6) % 3
    out = mix(batch, y, method_spec(method, lam_mode=lam_mode, prob=0.0), gen(5), 3)
    assert torch.equal(out.lam, torch.ones(6))
    assert_same_batch(out.inputs, batch)
    assert torch.equal(out.targets, F.one_hot(y, 3).float())
    for m, region in out.regions.items():
        if out.ops[m] == "token_cutmix":
            assert (region[:, 0] == region[:, 1]).all()
        elif out.ops[m] == "specmix":  # (f0, f1, t0, t1): two empty bands
            assert ((region[:, 0] == region[:, 1]) & (region[:, 2] == region[:, 3])).all()
        else:
            assert (region == 0).all()
    if method == "manifold_mixup":
        model = SmallCNN(3, 3, (5, 4), width=4, depth=2).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(batch["image"], out), model(batch["image"]))


# ------------------------------------------------------------------------------ pairing


@FAST
@given(n=st.integers(1, 12), seed=seeds)
def test_flip_pairs_each_sample_with_its_mirror(n, seed):
    index = sample_partners(n, gen(seed), CPU, "flip")
    assert index.tolist() == [n - 1 - i for i in range(n)]
    assert torch.equal(sample_partners(n, gen(seed), CPU, "flip", involution=True), index)
    if n > 1:
        x = torch.randn(n, 2)
        out = mix({"tabular": x}, torch.arange(n), MixSpec("mixup", pairing="flip",
                                                           lam_mode="sample"), gen(seed), n)
        assert out.index.tolist() == [n - 1 - i for i in range(n)]
        assert_interpolated(out.inputs["tabular"], x, out.lam, out.index)


@FAST
@given(n=st.integers(1, 12), seed=seeds)
def test_roll_pairs_each_sample_with_the_next(n, seed):
    assert sample_partners(n, gen(seed), CPU, "roll").tolist() == [(i + 1) % n
                                                                   for i in range(n)]
    if n > 1:
        x = torch.randn(n, 2)
        out = mix({"tabular": x}, torch.arange(n), MixSpec("mixup", pairing="roll",
                                                           lam_mode="sample"), gen(seed), n)
        assert out.index.tolist() == [(i + 1) % n for i in range(n)]
        assert_interpolated(out.inputs["tabular"], x, out.lam, out.index)


@FAST
@given(n=st.integers(1, 12), pairing=st.sampled_from(["permute", "flip"]), seed=seeds)
def test_involution_partners(n, pairing, seed):
    index = sample_partners(n, gen(seed), CPU, pairing, involution=True)
    assert_is_permutation(index, n)
    assert torch.equal(index[index], torch.arange(n))
    self_paired = int((index == torch.arange(n)).sum())
    assert self_paired == n % 2  # permute: the odd one out; flip: the middle sample


@FAST
@given(n=st.integers(2, 12), pairing=st.sampled_from(["permute", "flip"]),
       prob=st.sampled_from([1.0, 0.5]), alpha=alphas,
       method=st.sampled_from(["mixup", "cross_modal_regions"]), seed=seeds)
def test_pair_mode_shares_lam_within_each_pair(n, pairing, prob, alpha, method, seed):
    """pair λ mode: index is an involution, both samples of a pair have the same λ,
    a self-paired sample has λ = 1. Ops whose kept share depends only on λ and the
    pair (mixup, specmix) keep that property; token_cutmix does not (its λ is the share
    of each sample's own tokens kept, and the two lengths differ)."""
    batch = make_batch(n, seed)
    if method == "cross_modal_regions":
        spec = MixSpec("cross_modal", ops={"audio": "specmix"},
                       lam_mode="pair", pairing=pairing, prob=prob, alpha=alpha)
    else:
        spec = MixSpec(method, lam_mode="pair", pairing=pairing, prob=prob, alpha=alpha)
    y = torch.arange(n) % 3
    out = mix(batch, y, spec, gen(seed), 3)
    index, own = out.index, torch.arange(n)
    assert torch.equal(index[index], own)
    assert torch.equal(out.lam, out.lam[index])
    assert (out.lam[index == own] == 1.0).all()
    check_mixed(batch, dense_targets(y, 3), out, spec)
    # the pair's targets are the same mixture seen from both sides
    onehot, lam = F.one_hot(y, 3).double(), out.lam.double()[:, None]
    torch.testing.assert_close(out.targets[index].double(),
                               lam * onehot[index] + (1 - lam) * onehot, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["cutmix", "mixup_cutmix", "spec_cutmix"])
def test_pair_mode_shares_lam_for_box_ops(case):
    n = 32
    batch = make_batch(n, 0, h=6, w=6, f=6, t=6)
    if case == "spec_cutmix":
        spec = MixSpec("cross_modal", ops={"audio": "spec_cutmix"}, lam_mode="pair")
    else:
        spec = MixSpec(case, lam_mode="pair")
    out = mix(batch, torch.arange(n) % 3, spec, gen(0), 3)
    assert torch.equal(out.index[out.index], torch.arange(n))
    assert torch.equal(out.lam, out.lam[out.index])


@pytest.mark.parametrize("kwargs", [
    {"lam_mode": "pair", "pairing": "roll"},
    {"pairing": "shuffle"},
    {"off_epoch": -1},
    {"mixgen_lam": 0.0},
    {"mixgen_lam": 1.0},
    {"manifold_layers": ()},
    {"manifold_layers": (0, -1)},
    {"switch_prob": 1.5},
    {"switch_prob": -0.5},
    {"cutmix_alpha": 0.0},
])
def test_invalid_specs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        MixSpec(**kwargs)


def test_pair_mode_accepts_permute_and_flip():
    MixSpec(lam_mode="pair", pairing="permute")
    MixSpec(lam_mode="pair", pairing="flip")
    MixSpec(lam_mode="sample", pairing="roll")


# -------------------------------------------------------------------------- cross_modal


@FAST
@given(n=st.integers(2, 8), lam_mode=all_lam_modes, prob=st.sampled_from([1.0, 0.6]),
       alpha=alphas, h=st.integers(1, 6), width=st.integers(1, 7), seed=seeds)
def test_cross_modal_default_ops_share_one_partner_and_lam(n, lam_mode, prob, alpha, h,
                                                           width, seed):
    batch = make_batch(n, seed, h=h, w=h + 1, width=width)
    y = torch.randint(0, 5, (n,), generator=gen(seed + 1))
    spec = MixSpec("cross_modal", lam_mode=lam_mode, prob=prob, alpha=alpha)
    out = mix(batch, y, spec, gen(seed), 5)
    assert out.ops == {"image": "mixup", "audio": "mixup", "tabular": "mixup",
                       "text": "embedding_mixup"}
    assert out.boxes is None and out.regions == {} and out.deferred == ("text",)
    for m in ("image", "audio", "tabular"):
        assert_interpolated(out.inputs[m], batch[m], out.lam, out.index)
    assert torch.equal(out.inputs["text"], batch["text"])
    own = batch["text"] != PAD_ID
    assert_union_mask(out.masks["text"], batch["text"], out.lam, out.index)
    # the model mixes the text at its embedding layer with the same λ and partner
    emb = torch.randn(n, width, 3, generator=gen(seed + 2))
    mixed, mask = embedding_mixup(emb, own, out.lam, out.index)
    lam = out.lam.double()[:, None, None]
    torch.testing.assert_close(mixed.double(), lam * emb.double()
                               + (1 - lam) * emb.double()[out.index], atol=1e-6, rtol=1e-6)
    assert torch.equal(mask, out.masks["text"])
    if lam_mode != "pair":
        assert torch.equal(out.lam, draw_lam(spec, n, gen(seed), CPU))
    assert_targets_mixed(out, dense_targets(y, 5))


@FAST
@given(n=st.integers(2, 8), lam_mode=all_lam_modes, alpha=alphas, h=st.integers(1, 8),
       w=st.integers(1, 8), seed=seeds)
def test_cross_modal_image_cutmix_lam_is_used_by_every_other_modality(n, lam_mode, alpha, h,
                                                                        w, seed):
    batch = make_batch(n, seed, h=h, w=w)
    y = torch.randint(0, 4, (n,), generator=gen(seed + 1))
    spec = MixSpec("cross_modal", ops={"image": "cutmix"}, lam_mode=lam_mode, alpha=alpha)
    out = mix(batch, y, spec, gen(seed), 4)
    assert out.ops == {"image": "cutmix", "audio": "mixup", "tabular": "mixup",
                       "text": "embedding_mixup"}
    mask = box_mask(out.boxes, h, w)
    assert_cells_from_partner(out.inputs["image"], batch["image"], out.index, mask)
    kept = 1 - mask.flatten(1).double().mean(1)
    torch.testing.assert_close(out.lam.double(), kept, atol=1e-6, rtol=0)
    # the kept share, counted from the pixels themselves
    taken = count_taken(out.inputs["image"], batch["image"], out.index)
    moved = out.index != torch.arange(n)
    assert torch.equal(taken[moved], mask[moved])
    for m in ("audio", "tabular"):
        assert_interpolated(out.inputs[m], batch[m], out.lam, out.index)
    assert_union_mask(out.masks["text"], batch["text"], out.lam, out.index)
    assert_targets_mixed(out, dense_targets(y, 4))


@pytest.mark.parametrize("order", [("image", "audio"), ("audio", "image")])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
@pytest.mark.parametrize("seed", range(4))
def test_cross_modal_first_region_op_defines_lam(order, lam_mode, seed):
    """Region ops run first, in the batch's order; the first one's exact kept share is λ,
    and the ones after it cut with that λ."""
    n, h, w = 8, 7, 6
    full = make_batch(n, seed, h=h, w=w, f=5, t=9)
    batch = {m: full[m] for m in (*order, "tabular", "text")}
    spec = MixSpec("cross_modal", ops={"audio": "specmix", "image": "cutmix"},
                   lam_mode=lam_mode)
    out = mix(batch, torch.arange(n) % 3, spec, gen(seed), 3)
    assert list(out.ops) == [*order, "tabular", "text"]
    box = box_mask(out.regions["image"], h, w)
    bands = band_mask(out.regions["audio"], 5, 9)
    assert_cells_from_partner(out.inputs["image"], batch["image"], out.index, box)
    assert_cells_from_partner(out.inputs["audio"], batch["audio"], out.index, bands)
    kept = {"image": 1 - box.flatten(1).double().mean(1),
            "audio": 1 - bands.flatten(1).double().mean(1)}
    first = order[0]
    drawn = draw_lam(spec, n, gen(seed), CPU)
    torch.testing.assert_close(out.lam.double(), kept[first], atol=1e-6, rtol=0)
    assert_interpolated(out.inputs["tabular"], batch["tabular"], out.lam, out.index)
    regions = {m: out.regions[m].cpu() for m in order}
    if first == "audio":
        # specmix cut with the drawn λ; cutmix then drew its box from specmix's kept share
        for size, (lo, hi) in ((5, (0, 1)), (9, (2, 3))):
            widths = (size * (1.0 - torch.sqrt(drawn))).floor().long()
            assert torch.equal(regions["audio"][:, hi] - regions["audio"][:, lo], widths)
        cut_h = (h * torch.sqrt(1.0 - out.lam)).long()
        box_h = regions["image"][:, 2] - regions["image"][:, 0]
        assert (box_h <= cut_h).all()
    else:
        # cutmix drew its box from the drawn λ; specmix's bands come from the kept share
        cut_h = (h * torch.sqrt(1.0 - drawn)).long()
        assert ((regions["image"][:, 2] - regions["image"][:, 0]) <= cut_h).all()
        widths = (5 * (1.0 - torch.sqrt(out.lam))).floor().long()
        assert torch.equal(regions["audio"][:, 1] - regions["audio"][:, 0], widths)


def test_cross_modal_region_order_follows_the_kinds_mapping():
    n = 8
    batch = make_batch(n, 3, h=6, w=6, f=5, t=9)
    kinds = {"audio": "audio", "image": "image", "tabular": "tabular", "text": "text"}
    spec = MixSpec("cross_modal", ops={"image": "cutmix", "audio": "specmix"},
                   lam_mode="sample")
    out = mix(batch, torch.arange(n) % 2, spec, gen(3), 2, kinds=kinds)
    bands = band_mask(out.regions["audio"], 5, 9)
    torch.testing.assert_close(out.lam.double(), 1 - bands.flatten(1).double().mean(1),
                               atol=1e-6, rtol=0)


@FAST
@given(n=st.integers(2, 8), lam_mode=all_lam_modes, h=st.integers(2, 7), f=st.integers(1, 6),
       t=st.integers(1, 9), seed=seeds)
def test_cross_modal_per_modality_ops_under_one_lam(n, lam_mode, h, f, t, seed):
    """image cutmix, text embedding_mixup, audio specmix, tabular mixup: one partner, and
    the image's kept share is the λ of the labels, the tabular features and the text."""
    batch = make_batch(n, seed, h=h, w=h, f=f, t=t)
    y = torch.randint(0, 3, (n,), generator=gen(seed + 1))
    spec = MixSpec("cross_modal", lam_mode=lam_mode,
                   ops={"image": "cutmix", "text": "embedding_mixup", "audio": "specmix"})
    out = mix(batch, y, spec, gen(seed), 3)
    check_mixed(batch, dense_targets(y, 3), out, spec)
    box = box_mask(out.boxes, h, h)
    torch.testing.assert_close(out.lam.double(), 1 - box.flatten(1).double().mean(1),
                               atol=1e-6, rtol=0)
    assert out.deferred == ("text",)


def test_cross_modal_token_cutmix_defines_lam_when_it_is_the_only_region_op():
    n = 8
    batch = make_batch(n, 1, width=9)
    spec = MixSpec("cross_modal", ops={"text": "token_cutmix"}, lam_mode="sample")
    out = mix(batch, torch.arange(n) % 2, spec, gen(1), 2)
    kept = check_token_cutmix(out.inputs["text"], batch["text"], out.index,
                              out.regions["text"])
    torch.testing.assert_close(out.lam.double(), kept, atol=1e-6, rtol=0)
    for m in ("image", "audio", "tabular"):
        assert_interpolated(out.inputs[m], batch[m], out.lam, out.index)
    assert out.deferred == () and out.boxes is None


@pytest.mark.parametrize("shape", [(6, 16), (6, 1, 16)])
def test_audio_waveforms_are_interpolated(shape):
    x = torch.randn(shape, generator=gen(0))
    out = mix({"audio": x, "tabular": torch.randn(6, 2)}, torch.arange(6) % 2,
              MixSpec("cross_modal", lam_mode="sample"), gen(1), 2)
    assert out.ops["audio"] == "mixup"
    assert_interpolated(out.inputs["audio"], x, out.lam, out.index)


def test_video_cutmix_uses_one_box_per_clip():
    n, frames, h, w = 5, 3, 6, 7
    video = labelled(n, (frames, 2, h, w), torch.float32, gen(0))
    out = mix({"video": video}, torch.arange(n), MixSpec("cutmix", lam_mode="sample"),
              gen(2), n)
    mask = box_mask(out.boxes, h, w)
    assert_cells_from_partner(out.inputs["video"], video, out.index, mask)
    torch.testing.assert_close(out.lam.double(), 1 - mask.flatten(1).double().mean(1),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["mixup", "cutmix", "cross_modal", "mixup_cutmix"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample"])
def test_modalities_restricts_what_is_mixed(method, lam_mode):
    n = 8
    batch = make_batch(n, 7)
    y = torch.arange(n) % 4
    spec = MixSpec(method, modalities=("image",), lam_mode=lam_mode,
                   ops={"text": "token_cutmix"} if method == "cross_modal" else {})
    out = mix(batch, y, spec, gen(7), 4)
    assert set(out.ops) == {"image"}
    for m in ("audio", "tabular", "text"):
        assert torch.equal(out.inputs[m], batch[m])
    assert out.deferred == () and out.masks == {}
    assert not torch.equal(out.inputs["image"], batch["image"])
    check_mixed(batch, dense_targets(y, 4), out, spec)
    assert (out.lam < 1).any()


def test_modalities_can_pick_the_text_alone():
    n = 6
    batch = make_batch(n, 8, width=8)
    spec = MixSpec("cross_modal", modalities=("text",), ops={"text": "token_cutmix"},
                   lam_mode="sample")
    out = mix(batch, torch.arange(n) % 2, spec, gen(8), 2)
    assert set(out.ops) == {"text"}
    for m in ("image", "audio", "tabular"):
        assert torch.equal(out.inputs[m], batch[m])
    check_mixed(batch, dense_targets(torch.arange(n) % 2, 2), out, spec)


@pytest.mark.parametrize(("ops", "modalities", "match"), [
    ({"image": "specmix"}, None, "does not apply"),
    ({"text": "mixup"}, None, "does not apply"),
    ({"tabular": "cutmix"}, None, "does not apply"),
    ({"audio": "token_cutmix"}, None, "does not apply"),
    ({"image": "mosaic"}, None, "unknown op"),
    ({"depth": "cutmix"}, None, "not in the batch"),
    ({}, ("depth",), "not in the batch"),
])
def test_cross_modal_rejects_bad_op_choices(ops, modalities, match):
    with pytest.raises(ValueError, match=match):
        mix(make_batch(4, 0), torch.arange(4), MixSpec("cross_modal", ops=ops,
                                                       modalities=modalities), gen(0), 4)


def test_region_ops_reject_tensors_without_two_trailing_axes():
    with pytest.raises(ValueError, match="specmix"):
        mix({"audio": torch.randn(4, 16)}, torch.arange(4),
            MixSpec("cross_modal", ops={"audio": "specmix"}), gen(0), 4)
    with pytest.raises(ValueError, match="spec_cutmix"):
        mix({"audio": torch.randn(4, 16)}, torch.arange(4),
            MixSpec("cross_modal", ops={"audio": "spec_cutmix"}), gen(0), 4)


# --------------------------------------------------------------------------------- text


@FAST
@given(n=st.integers(2, 8), width=st.integers(1, 10), lam_mode=st.sampled_from(["batch",
                                                                                 "sample"]),
       prob=st.sampled_from([1.0, 0.5]), alpha=alphas, seed=seeds)
def test_token_cutmix_replaces_one_span_and_reports_share_kept(n, width, lam_mode, prob,
                                                               alpha, seed):
    ids = make_text(n, width, gen(seed + 1))
    tab = torch.randn(n, 2, generator=gen(seed + 2))
    spec = MixSpec("cross_modal", ops={"text": "token_cutmix"}, lam_mode=lam_mode, prob=prob,
                   alpha=alpha)
    y = torch.randint(0, 3, (n,), generator=gen(seed + 3))
    out = mix({"text": ids, "tabular": tab}, y, spec, gen(seed), 3)
    spans = out.regions["text"]
    assert spans.shape == (n, 3)
    mixed = out.inputs["text"]
    kept = check_token_cutmix(mixed, ids, out.index, spans)
    torch.testing.assert_close(out.lam.double(), kept, atol=1e-6, rtol=0)
    len_a, len_b = nonpad_lengths(ids), nonpad_lengths(ids)[out.index]
    drawn = draw_lam(spec, n, gen(seed), CPU)
    expected_cut = torch.minimum((len_a.float() * (1.0 - drawn)).floor().long(), len_b)
    assert torch.equal(spans[:, 1] - spans[:, 0], expected_cut)
    # no padding inside: the mix is exactly as long as A and left-aligned
    assert torch.equal(nonpad_lengths(mixed), len_a)
    assert torch.equal(mixed != PAD_ID, ids != PAD_ID)
    assert_interpolated(out.inputs["tabular"], tab, out.lam, out.index)
    assert_targets_mixed(out, dense_targets(y, 3))
    assert mixed.dtype == ids.dtype


@FAST
@given(n=st.integers(1, 8), t=st.integers(1, 8), d=st.integers(1, 4),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=seeds)
def test_embedding_mixup_interpolates_embeddings_and_unions_masks(n, t, d, dtype, seed):
    ids = make_text(n, t, gen(seed + 1))
    mask = ids != PAD_ID
    emb = torch.randn(n, t, d, generator=gen(seed + 2)).to(dtype).requires_grad_(True)
    lam = torch.rand(n, generator=gen(seed + 3))
    index = torch.randperm(n, generator=gen(seed + 4))
    mixed, union = embedding_mixup(emb, mask, lam, index)
    assert mixed.dtype == dtype and union.dtype == torch.bool
    assert_interpolated(mixed.detach(), emb.detach(), lam, index)
    assert torch.equal(union, mask | mask[index])
    # gradients reach every token embedding: d/de_j = λ_j + Σ_{i: index[i] = j} (1 − λ_i)
    mixed.float().sum().backward()
    expected = lam.clone().index_add_(0, index, 1 - lam)
    torch.testing.assert_close(emb.grad.float(), expected.view(n, 1, 1).expand(n, t, d),
                               **tolerance(dtype))


def test_embedding_mixup_mask_is_unchanged_for_unmixed_samples():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0], [8, 9, 10, 0], [3, 0, 0, 0]])
    own = ids != PAD_ID
    out = mix({"text": ids}, torch.arange(4), MixSpec("cross_modal", prob=0.0), gen(0), 4)
    assert torch.equal(out.lam, torch.ones(4))
    assert not torch.equal(out.index, torch.arange(4))  # (seed 0: 1 <-> 2 swapped)
    assert torch.equal(out.masks["text"], own)
    emb = torch.randn(4, 4, 2)
    _, mask = embedding_mixup(emb, own, out.lam, out.index)
    assert torch.equal(mask, own)


# ------------------------------------------------------------------------------- mixgen


@FAST
@given(n=st.integers(2, 8), width=st.integers(1, 8),
       pairing=st.sampled_from(["permute", "flip", "roll"]),
       mixgen_lam=st.sampled_from([0.5, 0.3, 0.9]), dtype=dtypes, seed=seeds)
def test_mixgen_interpolates_images_and_concatenates_texts(n, width, pairing, mixgen_lam,
                                                           dtype, seed):
    g = gen(seed + 1)
    image = labelled(n, (3, 4, 4), dtype, g)
    ids = make_text(n, width, g)
    batch = {"image": image, "text": ids}
    originals = snapshot(batch)
    y = torch.randint(0, 4, (n,), generator=g)
    spec = MixSpec("mixgen", pairing=pairing, mixgen_lam=mixgen_lam, alpha=0.3)
    out = mix(batch, y, spec, gen(seed), 4)
    assert out.ops == {"image": "mixup", "text": "concat"}
    own = out.index == torch.arange(n)  # a sample drawn as its own partner stays unmixed
    assert torch.equal(out.lam, torch.where(own, 1.0, torch.full((n,), mixgen_lam)))
    # built from the unmixed batch: with roll, sample i's partner i+1 is itself mixed,
    # but what i receives is i+1's original image and text
    assert_interpolated(out.inputs["image"], originals["image"], out.lam, out.index)
    assert torch.equal(out.inputs["text"],
                       concat_reference(originals["text"], out.index, out.lam))
    assert torch.equal(out.masks["text"], out.inputs["text"] != PAD_ID)
    assert out.deferred == () and out.boxes is None
    assert_targets_mixed(out, dense_targets(y, 4))
    assert_same_batch(batch, originals)


def test_mixgen_text_is_own_tokens_then_partners_truncated():
    ids = torch.tensor([[1, 2, 0, 0, 0], [3, 4, 5, 6, 0], [7, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    image = torch.rand(4, 1, 2, 2)
    out = mix({"image": image, "text": ids}, torch.arange(4), MixSpec("mixgen",
                                                                      pairing="roll"),
              gen(0), 4)
    assert out.inputs["text"].tolist() == [[1, 2, 3, 4, 5], [3, 4, 5, 6, 7],
                                           [7, 0, 0, 0, 0], [1, 2, 0, 0, 0]]


@pytest.mark.parametrize("batch", [
    {"image": torch.rand(4, 1, 2, 2)},
    {"text": torch.ones(4, 3, dtype=torch.long)},
    {"image": torch.rand(4, 1, 2, 2), "tabular": torch.rand(4, 2)},
])
def test_mixgen_needs_an_image_and_a_text(batch):
    with pytest.raises(ValueError, match="mixgen"):
        mix(batch, torch.arange(4), MixSpec("mixgen"), gen(0), 4)


def test_mixgen_prob_zero_leaves_the_batch_unmixed():
    batch = make_batch(4, 0)
    out = mix(batch, torch.arange(4), MixSpec("mixgen", prob=0.0), gen(0), 4)
    assert torch.equal(out.lam, torch.ones(4))
    assert_same_batch(out.inputs, batch)


def test_mixgen_self_paired_sample_is_not_mixed():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0], [8, 9, 10, 0]])
    batch = {"image": torch.rand(3, 1, 2, 2), "text": ids}
    out = mix(batch, torch.arange(3), MixSpec("mixgen", lam_mode="pair", pairing="flip"),
              gen(0), 3)
    assert int(out.index[1]) == 1
    assert float(out.lam[1]) == 1.0
    assert out.inputs["text"][1].tolist() == [7, 0, 0, 0]


# -------------------------------------------------------------------------------- audio


@FAST
@given(n=st.integers(2, 8), channels=st.sampled_from([None, 1, 2]), f=st.integers(1, 8),
       t=st.integers(1, 10), lam_mode=st.sampled_from(["batch", "sample"]),
       prob=st.sampled_from([1.0, 0.5]), alpha=alphas, dtype=dtypes, seed=seeds)
def test_specmix_lam_is_exact_share_of_cells_kept(n, channels, f, t, lam_mode, prob, alpha,
                                                  dtype, seed):
    shape = (f, t) if channels is None else (channels, f, t)
    spec_x = labelled(n, shape, dtype, gen(seed + 1))
    tab = torch.randn(n, 2, generator=gen(seed + 2))
    spec = MixSpec("cross_modal", ops={"audio": "specmix"}, lam_mode=lam_mode, prob=prob,
                   alpha=alpha)
    out = mix({"audio": spec_x, "tabular": tab}, torch.arange(n) % 3, spec, gen(seed), 3)
    bands = out.regions["audio"]
    assert bands.shape == (n, 4)
    mask = band_mask(bands, f, t)
    assert_cells_from_partner(out.inputs["audio"], spec_x, out.index, mask)
    taken = count_taken(out.inputs["audio"], spec_x, out.index)
    moved = out.index != torch.arange(n)
    assert torch.equal(taken[moved], mask[moved])
    torch.testing.assert_close(out.lam.double(), 1 - mask.flatten(1).double().mean(1),
                               atol=1e-6, rtol=0)
    for i in torch.nonzero(moved).flatten().tolist():
        assert float(out.lam[i]) == pytest.approx(1 - int(taken[i].sum()) / (f * t), abs=1e-6)
    # band widths are floor(size (1 − √λ)) for the drawn λ
    drawn = draw_lam(spec, n, gen(seed), CPU)
    for size, (lo, hi) in ((f, (0, 1)), (t, (2, 3))):
        widths = (size * (1.0 - torch.sqrt(drawn))).floor().long()
        assert torch.equal(bands[:, hi] - bands[:, lo], widths)
    assert_interpolated(out.inputs["tabular"], tab, out.lam, out.index)
    assert out.inputs["audio"].dtype == dtype


@FAST
@given(n=st.integers(2, 8), f=st.integers(1, 10), t=st.integers(1, 10),
       lam_mode=st.sampled_from(["batch", "sample"]), alpha=alphas, dtype=dtypes, seed=seeds)
def test_spec_cutmix_lam_is_exact_share_of_cells_kept(n, f, t, lam_mode, alpha, dtype, seed):
    spec_x = labelled(n, (1, f, t), dtype, gen(seed + 1))
    spec = MixSpec("cross_modal", ops={"audio": "spec_cutmix"}, lam_mode=lam_mode,
                   alpha=alpha)
    out = mix({"audio": spec_x}, torch.arange(n) % 3, spec, gen(seed), 3)
    boxes = out.regions["audio"]  # (f0, t0, f1, t1)
    mask = box_mask(boxes, f, t)
    assert_cells_from_partner(out.inputs["audio"], spec_x, out.index, mask)
    taken = count_taken(out.inputs["audio"], spec_x, out.index)
    moved = out.index != torch.arange(n)
    assert torch.equal(taken[moved], mask[moved])
    torch.testing.assert_close(out.lam.double(), 1 - mask.flatten(1).double().mean(1),
                               atol=1e-6, rtol=0)
    assert out.boxes is None  # boxes are the image's; the spectrogram's are in regions
    if lam_mode == "batch":
        assert (boxes == boxes[0]).all()


def test_specmix_gradients_follow_the_mask():
    n, f, t = 5, 4, 6
    x = torch.randn(n, 1, f, t, requires_grad=True)
    out = mix({"audio": x}, torch.arange(n), MixSpec("cross_modal", ops={"audio": "specmix"},
                                                     lam_mode="sample"), gen(3), n)
    out.inputs["audio"].sum().backward()
    mask = band_mask(out.regions["audio"], f, t).float()[:, None]
    inv = torch.empty_like(out.index)
    inv[out.index] = torch.arange(n)
    torch.testing.assert_close(x.grad, (1 - mask) + mask[inv])


# -------------------------------------------------------------------------- mixup_cutmix


@FAST
@given(n=st.integers(2, 8), h=st.integers(1, 8), lam_mode=st.sampled_from(["batch",
                                                                            "sample"]),
       cutmix_alpha=st.sampled_from([None, 0.5]), seed=seeds)
def test_mixup_cutmix_switch_prob_one_is_cutmix(n, h, lam_mode, cutmix_alpha, seed):
    batch = make_batch(n, seed, h=h, w=h)
    spec = MixSpec("mixup_cutmix", switch_prob=1.0, lam_mode=lam_mode,
                   cutmix_alpha=cutmix_alpha)
    y = torch.arange(n) % 3
    out = mix(batch, y, spec, gen(seed), 3)
    assert out.boxes is not None
    mask = box_mask(out.boxes, h, h)
    assert_cells_from_partner(out.inputs["image"], batch["image"], out.index, mask)
    torch.testing.assert_close(out.lam.double(), 1 - mask.flatten(1).double().mean(1),
                               atol=1e-6, rtol=0)
    assert_interpolated(out.inputs["tabular"], batch["tabular"], out.lam, out.index)
    assert_targets_mixed(out, dense_targets(y, 3))


@FAST
@given(n=st.integers(2, 8), lam_mode=st.sampled_from(["batch", "sample"]),
       cutmix_alpha=st.sampled_from([None, 0.5]), seed=seeds)
def test_mixup_cutmix_switch_prob_zero_is_mixup(n, lam_mode, cutmix_alpha, seed):
    batch = make_batch(n, seed)
    spec = MixSpec("mixup_cutmix", switch_prob=0.0, lam_mode=lam_mode,
                   cutmix_alpha=cutmix_alpha)
    out = mix(batch, torch.arange(n) % 3, spec, gen(seed), 3)
    # the cutmix op is planned but skipped for every sample: its boxes are all empty
    assert out.boxes is not None and (out.boxes == 0).all()
    assert torch.equal(out.lam, draw_lam(spec, n, gen(seed), CPU))
    for m in ("image", "audio", "tabular"):
        assert_interpolated(out.inputs[m], batch[m], out.lam, out.index)


@FAST
@given(n=st.integers(2, 10), h=st.integers(2, 8), cutmix_alpha=st.sampled_from([None, 0.5]),
       seed=seeds)
def test_mixup_cutmix_sample_mode_mixes_both_kinds(n, h, cutmix_alpha, seed):
    batch = make_batch(n, seed, h=h, w=h)
    spec = MixSpec("mixup_cutmix", switch_prob=0.5, lam_mode="sample",
                   cutmix_alpha=cutmix_alpha)
    y = torch.arange(n) % 3
    out = mix(batch, y, spec, gen(seed), 3)
    mask = box_mask(out.boxes, h, h)
    area = mask.flatten(1).sum(1)
    cut = area > 0
    assert_cells_from_partner(out.inputs["image"], batch["image"], out.index, mask, rows=cut)
    torch.testing.assert_close(out.lam[cut].double(), 1 - area[cut].double() / (h * h),
                               atol=1e-6, rtol=0)
    assert_interpolated(out.inputs["image"], batch["image"], out.lam, out.index, rows=~cut)
    assert_interpolated(out.inputs["tabular"], batch["tabular"], out.lam, out.index)
    assert_targets_mixed(out, dense_targets(y, 3))


def test_mixup_cutmix_sample_mode_uses_both_ops_in_one_batch():
    n, h = 32, 8
    batch = make_batch(n, 0, h=h, w=h)
    out = mix(batch, torch.arange(n) % 3, MixSpec("mixup_cutmix", lam_mode="sample"), gen(0),
              3)
    area = box_mask(out.boxes, h, h).flatten(1).sum(1)
    interpolated = (area == 0) & (out.lam < 1) & (out.index != torch.arange(n))
    assert int((area > 0).sum()) >= 5 and int(interpolated.sum()) >= 5


def test_mixup_cutmix_batch_mode_switches_per_batch():
    n, h = 8, 8
    chose_cutmix = []
    for seed in range(12):
        batch = make_batch(n, seed, h=h, w=h)
        out = mix(batch, torch.arange(n) % 3, MixSpec("mixup_cutmix", lam_mode="batch"),
                  gen(seed), 3)
        # one op for the whole batch: every sample has the same box, or none has one
        assert (out.boxes == out.boxes[0]).all()
        assert (out.lam == out.lam[0]).all()
        chose_cutmix.append(bool((out.boxes != 0).any()))
        if not chose_cutmix[-1]:
            for m in ("image", "audio", "tabular"):
                assert_interpolated(out.inputs[m], batch[m], out.lam, out.index)
    assert any(chose_cutmix) and not all(chose_cutmix)


def check_sample_ops(batch: dict[str, torch.Tensor], out: Mixed, h: int, w: int) -> list[str]:
    """What ``out`` reports per sample is what ran on the image: a "cutmix" sample has
    its box's cells from the partner and its own elsewhere, a "mixup" one is
    interpolated with its λ and has an all-zero box."""
    ops = out.sample_ops("image")
    assert out.ops["image"] == "cutmix" and out.fallback_ops == {"image": "mixup"}
    assert out.op_mask["image"].dtype == torch.bool
    assert ops == ["cutmix" if cut else "mixup" for cut in out.op_mask["image"].tolist()]
    assert out.sample_ops("tabular") == ["mixup"] * len(ops)  # not switched: its op throughout
    cut = out.op_mask["image"]
    assert (out.boxes[~cut] == 0).all()
    assert_cells_from_partner(out.inputs["image"], batch["image"], out.index,
                              box_mask(out.boxes, h, w), rows=cut)
    assert_interpolated(out.inputs["image"], batch["image"], out.lam, out.index, rows=~cut)
    return ops


@pytest.mark.parametrize("seed", [2, 5])
def test_mixup_cutmix_reports_mixup_for_the_batches_it_interpolates(seed):
    """Issue 10: in batch mode, seeds 2 and 5 of a batch of four pick mixup; the report
    used to say cutmix with a [0, 0, 0, 0] box for images that were interpolated."""
    n, h = 4, 16
    images = torch.rand(n, 3, h, h, generator=gen(100))
    out = mix({"image": images}, torch.arange(n) % 3, MixSpec("mixup_cutmix"), gen(seed), 3)
    lam = out.lam.view(-1, 1, 1, 1)
    assert torch.allclose(out.inputs["image"], lam * images + (1 - lam) * images[out.index])
    assert out.sample_ops("image") == ["mixup"] * n
    assert not out.op_mask["image"].any() and (out.boxes == 0).all()
    cut = mix({"image": images}, torch.arange(n) % 3, MixSpec("mixup_cutmix"), gen(0), 3)
    assert cut.sample_ops("image") == ["cutmix"] * n and (cut.boxes[:, 2:] > 0).all()


@FAST
@given(n=st.integers(2, 10), h=st.integers(2, 8), lam_mode=all_lam_modes,
       switch_prob=st.sampled_from([0.0, 0.5, 1.0]), prob=st.sampled_from([1.0, 0.5]),
       seed=seeds)
def test_mixup_cutmix_reports_the_op_each_sample_ran(n, h, lam_mode, switch_prob, prob, seed):
    batch = make_batch(n, seed, h=h, w=h)
    spec = MixSpec("mixup_cutmix", lam_mode=lam_mode, switch_prob=switch_prob, prob=prob)
    out = mix(batch, torch.arange(n) % 3, spec, gen(seed), 3)
    ops = check_sample_ops(batch, out, h, h)
    if lam_mode == "batch":
        assert len(set(ops)) == 1
    if lam_mode == "pair":  # both samples of a pair: one op
        assert all(ops[i] == ops[j] for i, j in enumerate(out.index.tolist()))
    if switch_prob in (0.0, 1.0):
        assert set(ops) == {"mixup" if switch_prob == 0.0 else "cutmix"}


def test_mixup_cutmix_sample_mode_reports_both_ops_in_one_batch():
    n, h = 32, 8
    batch = make_batch(n, 0, h=h, w=h)
    out = mix(batch, torch.arange(n) % 3, MixSpec("mixup_cutmix", lam_mode="sample"), gen(0),
              3)
    ops = check_sample_ops(batch, out, h, h)
    assert ops.count("cutmix") >= 5 and ops.count("mixup") >= 5


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "mixup_cutmix"])
def test_other_methods_run_their_planned_op_on_every_sample(method):
    n = 6
    out = mix(make_batch(n, 3), torch.arange(n) % 3, method_spec(method), gen(3), 3)
    assert out.op_mask == {} and out.fallback_ops == {}
    for m in make_batch(n, 3):
        assert out.sample_ops(m) == [out.ops.get(m)] * n


# ------------------------------------------------------------------------------- labels


@FAST
@given(n=st.integers(2, 8), k=st.integers(2, 6),
       method=st.sampled_from(["mixup", "cutmix", "cross_modal_regions", "mixgen",
                               "manifold_mixup"]),
       lam_mode=st.sampled_from(["batch", "sample"]), seed=seeds)
def test_multi_label_targets_are_mixed_linearly(n, k, method, lam_mode, seed):
    multi = (torch.rand(n, k, generator=gen(seed + 1)) < 0.5).float()
    out = mix(make_batch(n, seed), multi, method_spec(method, lam_mode=lam_mode), gen(seed))
    lam = out.lam.double()[:, None]
    expected = lam * multi.double() + (1 - lam) * multi.double()[out.index]
    torch.testing.assert_close(out.targets.double(), expected, atol=1e-6, rtol=0)
    assert ((out.targets >= 0) & (out.targets <= 1)).all()


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_multi_label_smoothing_in_mix_equals_the_trainers(method, n, smoothing):
    """One rule: mix(multilabel=True) on multi-hot targets gives the targets the
    multilabel task trains on (the trainer mixes without smoothing, then smooths)."""
    k = 5
    batch = make_batch(n, 4)
    multi = (torch.rand(n, k, generator=gen(5)) < 0.4).to(torch.uint8)
    spec = method_spec(method, lam_mode="sample", label_smoothing=smoothing)
    direct = mix(batch, multi, spec, gen(6), k, multilabel=True)
    task_spec, kept_back = MULTILABEL.mix_spec(spec)
    trained = MULTILABEL.targets(mix(batch, multi, task_spec, gen(6), k).targets, kept_back)
    torch.testing.assert_close(direct.targets, trained, atol=1e-6, rtol=0)
    # per class towards ½: a present tag ends at 1 − s/2 at most, an absent one at s/2 at least
    assert (direct.targets >= smoothing / 2 - 1e-6).all()
    assert (direct.targets <= 1 - smoothing / 2 + 1e-6).all()
    lam = direct.lam.double()[:, None]
    smoothed = multi.double() * (1 - smoothing) + smoothing / 2
    torch.testing.assert_close(direct.targets.double(),
                               lam * smoothed + (1 - lam) * smoothed[direct.index],
                               atol=1e-6, rtol=0)


def test_multi_label_smoothing_goes_towards_one_half_not_one_over_k():
    y = torch.tensor([[1, 0, 0, 0]], dtype=torch.uint8)
    spec = MixSpec("none", label_smoothing=0.2)
    batch = {"tabular": torch.zeros(1, 2)}
    torch.testing.assert_close(mix(batch, y, spec, gen(0), multilabel=True).targets,
                               torch.tensor([[0.9, 0.1, 0.1, 0.1]]))
    # rows not said to be multi-label are class rows: smoothed towards 1/K
    torch.testing.assert_close(mix(batch, y, spec, gen(0)).targets,
                               torch.tensor([[0.85, 0.05, 0.05, 0.05]]))
    assert smooth_targets(y.float(), 0.2, multilabel=True).tolist() == \
        MULTILABEL.targets(y.float(), 0.2).tolist()
    # classification keeps smoothing in mix(), so its trainer path is mix() itself
    assert CLASSIFICATION.mix_spec(spec) == (spec, 0.0)


def test_multi_label_needs_rows_not_class_indices():
    with pytest.raises(ValueError, match="multi-hot rows"):
        mix(make_batch(4, 0), torch.arange(4), MixSpec("mixup"), gen(0), 4, multilabel=True)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_one_hot_targets_equal_class_indices(method, smoothing):
    n, k = 7, 4
    batch = make_batch(n, 9)
    y = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    spec = method_spec(method, lam_mode="sample", label_smoothing=smoothing)
    by_index = mix(batch, y, spec, gen(9), k)
    by_onehot = mix(batch, F.one_hot(y, k).float(), spec, gen(9))
    assert_same_batch(by_index.inputs, by_onehot.inputs)
    torch.testing.assert_close(by_index.targets, by_onehot.targets, atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("smoothing", [0.05, 0.3, 0.9])
def test_label_smoothing_rows_sum_to_one(method, smoothing):
    n, k = 8, 5
    y = torch.arange(n) % k
    out = mix(make_batch(n, 10), y, method_spec(method, lam_mode="sample",
                                                label_smoothing=smoothing), gen(10), k)
    t = out.targets.double()
    torch.testing.assert_close(t.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    assert (t >= smoothing / k - 1e-6).all() and (t <= 1).all()
    assert_targets_mixed(out, dense_targets(y, k, smoothing))


def test_class_indices_need_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        mix(make_batch(4, 0), torch.arange(4), MixSpec("cross_modal"), gen(0))


# ------------------------------------------------------------------------------ manifold


@FAST
@given(n=st.integers(2, 8), layers=st.lists(st.integers(0, 3), min_size=1, max_size=4),
       lam_mode=all_lam_modes, seed=seeds, host_seed=seeds)
def test_manifold_mixup_draws_a_layer_and_leaves_inputs(n, layers, lam_mode, seed, host_seed):
    batch = make_batch(n, seed)
    y = torch.arange(n) % 3
    spec = MixSpec("manifold_mixup", manifold_layers=tuple(layers), lam_mode=lam_mode)
    out = mix(batch, y, spec, gen(seed), 3, host_generator=gen(host_seed))
    assert out.layer in layers
    pick = int(torch.randint(len(layers), (1,), generator=gen(host_seed)))
    assert out.layer == layers[pick]  # drawn from the host generator alone
    assert out.ops == {} and out.boxes is None and out.deferred == ()
    assert_same_batch(out.inputs, batch)
    assert_targets_mixed(out, dense_targets(y, 3))
    if lam_mode != "pair":
        assert torch.equal(out.lam, draw_lam(spec, n, gen(seed), CPU))
    again = mix(batch, y, spec, gen(seed), 3, host_generator=gen(host_seed))
    assert_same_mixed(out, again)


def test_manifold_mixup_visits_every_configured_layer():
    spec = MixSpec("manifold_mixup", manifold_layers=(0, 2, 3))
    batch = {"image": torch.rand(4, 1, 4, 4)}
    host = gen(0)
    seen = {mix(batch, torch.arange(4), spec, gen(s), 4, host_generator=host).layer
            for s in range(40)}
    assert seen == {0, 2, 3}


def test_manifold_mixup_without_host_generator_uses_the_cpu_generator():
    spec = MixSpec("manifold_mixup", manifold_layers=(0, 1, 2, 3))
    batch = {"image": torch.rand(6, 1, 4, 4)}
    a = mix(batch, torch.arange(6), spec, gen(5), 6)
    b = mix(batch, torch.arange(6), spec, gen(5), 6)
    assert_same_mixed(a, b)
    assert torch.equal(a.lam, draw_lam(spec, 6, gen(5), CPU))


def test_manifold_mixup_on_an_accelerator_generator_needs_a_host_generator():
    # a stand-in for a CUDA generator: the plan only looks at its device
    accel = types.SimpleNamespace(device=torch.device("cuda"))
    spec = MixSpec("manifold_mixup", manifold_layers=(1, 2))
    req = PlanRequest(spec, {"image": "image"}, torch.full((4,), 0.5), torch.arange(4), accel,
                      None)
    with pytest.raises(ValueError, match="host_generator"):
        METHODS["manifold_mixup"](req)
    plan = METHODS["manifold_mixup"](dataclasses.replace(req, host_generator=gen(0)))
    assert plan.layer == (1, 2)[int(torch.randint(2, (1,), generator=gen(0)))]
    assert plan.ops == {}


@pytest.mark.cuda
@NEEDS_CUDA
def test_manifold_mixup_on_cuda_needs_a_host_generator():
    batch = {"image": torch.rand(4, 1, 4, 4, device="cuda")}
    spec = MixSpec("manifold_mixup")
    with pytest.raises(ValueError, match="host_generator"):
        mix(batch, torch.arange(4, device="cuda"), spec, gen(0, "cuda"), 4)
    out = mix(batch, torch.arange(4, device="cuda"), spec, gen(0, "cuda"), 4,
              host_generator=gen(1))
    assert out.layer in spec.manifold_layers and out.lam.device.type == "cuda"


def manual_forward(model: SmallCNN, x: torch.Tensor, layer: int, lam: torch.Tensor,
                   index: torch.Tensor) -> torch.Tensor:
    """SmallCNN's forward, written out, mixing the hidden state before block ``layer``
    (or after the last block)."""
    def mixed(h: torch.Tensor) -> torch.Tensor:
        w = lam.view(-1, 1, 1, 1)
        return w * h + (1 - w) * h[index]

    h = x
    for i, block in enumerate(model.blocks):
        if i == layer:
            h = mixed(h)
        h = block(h)
    if layer == len(model.blocks):
        h = mixed(h)
    return model.head(model.pool(h))


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_small_cnn_mixes_at_the_drawn_layer(layer):
    torch.manual_seed(0)
    model = SmallCNN(2, 4, (8, 8), width=4, depth=3).eval()
    assert model.mixing_layers == 3
    x = torch.randn(6, 2, 8, 8, generator=gen(1))
    out = mix({"image": x}, torch.arange(6) % 4,
              MixSpec("manifold_mixup", manifold_layers=(layer,), lam_mode="sample"), gen(4),
              4)
    assert out.layer == layer
    assert (out.index != torch.arange(6)).any(), "the seed must draw real partners"
    with torch.no_grad():
        got = model(x, out)
        ref = manual_forward(model, x, layer, out.lam, out.index)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        if layer == 0:
            # mixing at the input is mixup on the image
            lam = out.lam.view(-1, 1, 1, 1)
            torch.testing.assert_close(got, model(lam * x + (1 - lam) * x[out.index]),
                                       atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, model(x))


def test_small_cnn_manifold_gradients_flow_to_inputs_and_weights():
    torch.manual_seed(0)
    model = SmallCNN(1, 3, (6, 6), width=4, depth=2).train()
    x = torch.randn(5, 1, 6, 6, requires_grad=True)
    out = mix({"image": x}, torch.arange(5) % 3,
              MixSpec("manifold_mixup", manifold_layers=(1,), lam_mode="sample"), gen(0), 3)
    logits = model(out.inputs["image"], out)
    loss = torch.sum(-out.targets * logits.log_softmax(dim=1), dim=1).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_small_cnn_rejects_a_layer_beyond_its_depth():
    model = SmallCNN(1, 3, (6, 6), width=4, depth=2)
    x = torch.randn(4, 1, 6, 6)
    out = mix({"image": x}, torch.arange(4) % 3, MixSpec("manifold_mixup",
                                                         manifold_layers=(3,)), gen(0), 3)
    assert out.layer == 3
    with pytest.raises(ValueError, match="manifold layer 3"):
        model(x, out)


# ----------------------------------------------------------------------------- off_epoch


def test_off_epoch_stops_mixing_for_the_last_epochs():
    spec = MixSpec(off_epoch=2)
    assert spec.active_at(8, 10)
    assert not spec.active_at(9, 10)
    assert not spec.active_at(10, 10)
    assert all(spec.active_at(e, 10) for e in range(1, 9))
    assert all(MixSpec(off_epoch=0).active_at(e, 10) for e in range(1, 11))
    assert not any(MixSpec(off_epoch=10).active_at(e, 10) for e in range(1, 11))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_active_at_by_method(method):
    spec = method_spec(method, off_epoch=1)
    active = [spec.active_at(e, 5) for e in range(1, 6)]
    if method == "none":
        assert not any(active)
    else:
        assert active == [True, True, True, True, False]


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("method", ["mixup", "cross_modal", "cross_modal_regions", "mixgen"])
def test_gradients_flow_to_float_inputs(method):
    n = 6
    batch = make_batch(n, 11)
    for m in ("image", "audio", "tabular"):
        batch[m].requires_grad_(True)
    out = mix(batch, torch.arange(n) % 3, method_spec(method, lam_mode="sample"), gen(11), 3)
    loss = sum(out.inputs[m].float().sum() for m in ("image", "audio", "tabular"))
    loss.backward()
    lam = out.lam.detach()
    for m in ("image", "audio", "tabular"):
        grad = batch[m].grad
        assert grad is not None and torch.isfinite(grad).all(), m
        op = out.ops.get(m)
        if op == "mixup":
            # d/dx_j Σ_i (λ_i x_i + (1 − λ_i) x_index[i]) = λ_j + Σ_{i: index[i]=j} (1 − λ_i)
            expected = lam.clone().index_add_(0, out.index, 1 - lam)
            torch.testing.assert_close(grad, expected.view(-1, *[1] * (grad.dim() - 1))
                                       .expand_as(grad))
        elif op is None:
            assert torch.equal(grad, torch.ones_like(grad))
        else:  # a region op: each cell is used once by itself or by whoever took it
            assert torch.equal(grad.sum(), torch.tensor(float(grad.numel())))


# ------------------------------------------------------------------- devices and bfloat16


@pytest.mark.parametrize(("device", "dtype"), DEVICE_DTYPES)
@pytest.mark.parametrize("method", ["mixup", "cutmix", "cross_modal_regions", "mixup_cutmix",
                                    "mixgen"])
@pytest.mark.parametrize("lam_mode", ["batch", "sample", "pair"])
def test_methods_on_each_device(device, dtype, method, lam_mode):
    n = 7
    batch = make_batch(n, 12, dtype=dtype, device=device)
    before = snapshot(batch)
    y = torch.arange(n, device=device) % 3
    spec = method_spec(method, lam_mode=lam_mode)
    out = mix(batch, y, spec, gen(12, device), 3)
    for k, v in out.inputs.items():
        assert v.device == batch[k].device and v.dtype == batch[k].dtype, k
    for k, v in {**out.regions, **out.masks}.items():
        assert v.device.type == torch.device(device).type, k
    check_mixed(batch, dense_targets(y, 3), out, spec)
    assert_same_batch(batch, before)
    assert_same_mixed(out, mix(batch, y, spec, gen(12, device), 3))


@pytest.mark.parametrize(("device", "dtype"), DEVICE_DTYPES)
@FAST
@given(n=st.integers(2, 8), lam_mode=st.sampled_from(["batch", "sample"]), seed=seeds)
def test_specmix_and_token_cutmix_on_each_device(device, dtype, n, lam_mode, seed):
    batch = make_batch(n, seed, dtype=dtype, device=device, f=5, t=7, width=8)
    y = torch.randint(0, 3, (n,), generator=gen(seed + 1)).to(device)
    spec = MixSpec("cross_modal", ops={"audio": "specmix", "text": "token_cutmix"},
                   lam_mode=lam_mode)
    out = mix(batch, y, spec, gen(seed, device), 3)
    check_mixed(batch, dense_targets(y, 3), out, spec)
    assert out.regions["audio"].device == out.regions["text"].device == out.lam.device


@pytest.mark.parametrize(("device", "dtype"), DEVICE_DTYPES)
def test_embedding_mixup_and_gradients_on_each_device(device, dtype):
    n, t, d = 5, 6, 4
    ids = make_text(n, t, gen(0)).to(device)
    out = mix({"text": ids, "tabular": torch.randn(n, 2, device=device, dtype=dtype)},
              torch.arange(n, device=device), MixSpec("cross_modal", lam_mode="sample"),
              gen(1, device), n)
    emb = torch.randn(n, t, d, device=device, dtype=dtype, requires_grad=True)
    mixed, mask = embedding_mixup(emb, ids != PAD_ID, out.lam, out.index)
    assert mixed.device == emb.device and mixed.dtype == dtype
    assert torch.equal(mask, out.masks["text"])
    assert_interpolated(mixed.detach(), emb.detach(), out.lam, out.index)
    mixed.float().sum().backward()
    assert emb.grad is not None and torch.isfinite(emb.grad.float()).all()
