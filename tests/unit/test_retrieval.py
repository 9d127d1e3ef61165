"""The retrieval task: geodesic mixing, InfoNCE, recall@K and training (CPU)."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.mixing.geodesic import NEAR_PARALLEL_COS, slerp
from app.ml.models import ModelSpec
from app.ml.models.towers import MAX_LOGIT_SCALE, build_dual_encoder
from app.ml.retrieval import (
    KS,
    info_nce,
    mixgen_batch,
    paired_rows,
    recall_at_k,
    retrieval_metrics,
    train_retrieval,
)
from app.ml.training import TrainHooks, TrainSpec
from tests.recipes import SHORT

METHODS = ("none", "mixgen", "m3mix")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    # 10 classes, so class-level retrieval (all the synthetic pairs share) is
    # far from chance on a 40-sample test gallery
    return load_synthetic(num_samples=300, num_classes=10, modalities=("image", "text"),
                          image_size=8, text_length=8)


MODEL = ModelSpec(kind="multimodal", dim=16, width=8, depth=2, text_dim=16)


def _unit(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


# --- slerp ---------------------------------------------------------------------------


def test_slerp_stays_on_the_sphere_and_moves_along_the_great_circle():
    a, b = _unit(64, 16, seed=1), _unit(64, 16, seed=2)
    lam = torch.rand(64, generator=torch.Generator().manual_seed(3))
    out = slerp(a, b, lam)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(64))
    theta = torch.acos((a * b).sum(-1))
    # on the great circle: λθ away from a and (1-λ)θ away from b
    torch.testing.assert_close(torch.acos((out * a).sum(-1).clamp(-1, 1)), lam * theta,
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.acos((out * b).sum(-1).clamp(-1, 1)),
                               (1 - lam) * theta, atol=1e-4, rtol=0)


def test_slerp_endpoints_and_unnormalised_inputs():
    a, b = _unit(8, 5, seed=4), _unit(8, 5, seed=5)
    torch.testing.assert_close(slerp(3.0 * a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, 0.5 * b, 1.0), b)
    torch.testing.assert_close(slerp(a, b, torch.zeros(8)), a)


def test_slerp_small_angle_guard_is_finite_and_continuous():
    a = _unit(4, 6, seed=6)
    lam = torch.tensor([0.0, 0.3, 0.5, 1.0])
    identical = slerp(a, a.clone(), lam)
    assert torch.isfinite(identical).all()
    torch.testing.assert_close(identical, a)
    # just inside and just outside the guard, the result is the rotation by λθ
    # (inside, normalised lerp is off by O(θ³): under 1e-7 at the guard's edge)
    e1, e2 = torch.eye(6, dtype=torch.float64)[:2]
    limit = math.acos(NEAR_PARALLEL_COS)
    for theta in (0.5 * limit, 2.0 * limit, 1e-7):
        b = math.cos(theta) * e1 + math.sin(theta) * e2
        out = slerp(e1[None], b[None], 0.3)
        expected = math.cos(0.3 * theta) * e1 + math.sin(0.3 * theta) * e2
        torch.testing.assert_close(out[0], expected, atol=1e-7, rtol=0)


def test_slerp_near_antipodal_is_finite_unit_norm():
    a = _unit(5, 6, seed=7)
    b = -a + 1e-5 * _unit(5, 6, seed=8)
    lam = torch.tensor([0.1, 0.4, 0.5, 0.6, 0.9])
    out = slerp(a, b, lam)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    exact = slerp(a, -a, 0.5)  # no midpoint is defined; the documented choice is a
    torch.testing.assert_close(exact, a)


@pytest.mark.parametrize("case", ["identical", "antipodal", "near_antipodal", "generic"])
def test_slerp_gradients_are_finite(case):
    a = _unit(6, 4, seed=9).requires_grad_()
    base = _unit(6, 4, seed=10)
    b = {"identical": a.detach().clone(), "antipodal": -a.detach().clone(),
         "near_antipodal": -a.detach() + 1e-6 * base, "generic": base}[case].requires_grad_()
    lam = torch.linspace(0, 1, 6).requires_grad_()
    (slerp(a, b, lam) * _unit(6, 4, seed=11)).sum().backward()
    for t in (a, b, lam):
        assert t.grad is not None and torch.isfinite(t.grad).all(), case


def test_slerp_gradient_matches_finite_differences():
    a, b = _unit(3, 5, seed=12, dtype=torch.float64), _unit(3, 5, seed=13, dtype=torch.float64)
    lam = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    assert torch.autograd.gradcheck(slerp, (a.requires_grad_(), b.requires_grad_(),
                                            lam.requires_grad_()))


def test_slerp_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="lam must be"):
        slerp(_unit(4, 3), _unit(4, 3), torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        slerp(_unit(4, 3), _unit(3, 3), 0.5)


# --- loss and metrics ----------------------------------------------------------------


def _nce_by_hand(q, t, s, hard=None, valid=None, weight=1.0) -> float:
    n = len(q)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    plain = mixed = 0.0
    for side, other in ((q, t), (t, q)):
        for i in range(n):
            positive = s * dot(side[i], other[i])
            denom = sum(math.exp(s * dot(side[i], other[j])) for j in range(n))
            plain += -(positive - math.log(denom)) / n
            if hard is not None:
                denom = math.exp(positive) + sum(math.exp(s * dot(side[i], hard[j]))
                                                 for j in range(n) if j != i and valid[j])
                mixed += -(positive - math.log(denom)) / n
    return plain / 2 + weight * mixed / 2


def test_info_nce_equals_the_formula():
    q, t, h = _unit(4, 5, seed=14), _unit(4, 5, seed=15), _unit(4, 5, seed=16)
    scale = 7.5
    got = info_nce(q, t, scale)
    assert got.item() == pytest.approx(_nce_by_hand(q.tolist(), t.tolist(), scale), rel=1e-5)
    valid = torch.tensor([True, False, True, True])
    got_hard = info_nce(q, t, scale, h, valid, hard_weight=0.3)
    assert got_hard.item() == pytest.approx(
        _nce_by_hand(q.tolist(), t.tolist(), scale, h.tolist(), valid.tolist(), 0.3), rel=1e-5)
    # hard negatives can only add to the loss; with none valid the term is 0
    assert got_hard > got
    torch.testing.assert_close(info_nce(q, t, scale, h, torch.zeros(4, dtype=torch.bool)), got)


def test_recall_at_k_on_a_hand_made_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],    # positive first: rank 0
                        [0.8, 0.5, 0.1, 0.0],    # one above: rank 1
                        [0.3, 0.4, 0.4, 0.1],    # tied with one: counts against, rank 1
                        [0.5, 0.6, 0.7, 0.2]])   # last: rank 3
    got = recall_at_k(sim, (1, 2, 3, 4))
    assert {k: v.item() for k, v in got.items()} == {1: 0.25, 2: 0.75, 3: 0.75, 4: 1.0}
    # a collapsed model (all scores equal) is at the bottom, not the top
    assert recall_at_k(torch.ones(5, 5), (1, 4))[1].item() == 0.0
    assert recall_at_k(torch.ones(5, 5), (1, 5))[5].item() == 1.0


def test_retrieval_metrics_both_directions_in_chunks():
    # sim[i, j] = t_j[i]: each query's own target scores highest in its row (q2t
    # perfect), but target 1 scores query 0 above query 1 (t2q misses once)
    q = torch.eye(3)
    t = F.normalize(torch.tensor([[1.0, 0.9, 0.0], [0.71, 0.70, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    labels = torch.tensor([0, 1, 0])
    for chunk in (1, 2, 1024):
        m = retrieval_metrics(q, t, labels=labels, ks=(1, 2), chunk=chunk)
        assert m["r1_q2t"].item() == 1.0
        assert m["r1_t2q"].item() == pytest.approx(2 / 3)
        assert m["r2_t2q"].item() == 1.0
        assert m["class_p1_q2t"].item() == 1.0
        assert m["class_p1_t2q"].item() == pytest.approx(2 / 3)
        assert m["mean_recall"].item() == pytest.approx((1 + 1 + 2 / 3 + 1) / 4)
    m = retrieval_metrics(q, t, scale=10.0)
    assert set(m) == {f"r{k}_{d}" for k in KS for d in ("q2t", "t2q")} | {"mean_recall", "loss"}
    assert m["loss"].item() == pytest.approx(info_nce(q, t, 10.0).item(), rel=1e-5)


def test_class_scores_with_multi_hot_labels():
    q = torch.eye(3)
    t = F.normalize(torch.tensor([[1.0, 0.9, 0.0], [0.71, 0.70, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    # target 1's top-1 is query 0: a hit when they share a class (class 2 in
    # ``shares``); target 2 finds itself, a miss when it has no class at all
    shares = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=torch.uint8)
    disjoint = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.uint8)
    assert retrieval_metrics(q, t, labels=shares)["class_p1_t2q"].item() == pytest.approx(2 / 3)
    assert retrieval_metrics(q, t, labels=disjoint)["class_p1_t2q"].item() == pytest.approx(
        2 / 3)
    both = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.uint8)
    assert retrieval_metrics(q, t, labels=both)["class_p1_t2q"].item() == 1.0


def test_samples_missing_a_modality_are_left_out(data):
    rng = torch.Generator().manual_seed(0)
    has_text = torch.rand(data.num_samples, generator=rng) > 0.3
    ds = dataclasses.replace(data, present={"text": has_text})
    for split in ("train", "val", "test"):
        rows = paired_rows(ds, split, "image", "text")
        everyone = data.split_indices(split)
        assert torch.equal(rows, everyone[has_text[everyone]])
    result = train_retrieval(ds, MODEL, MixSpec("m3mix"),
                             TrainSpec(epochs=1, batch_size=32, device="cpu"),
                             query="image", target="text")
    assert result.status == "completed"
    assert all(math.isfinite(v) for v in result.metrics.values())
    nobody = dataclasses.replace(data, present={"text": torch.zeros(data.num_samples,
                                                                    dtype=torch.bool)})
    with pytest.raises(ValueError, match="dataset: the train split needs at least 2"):
        train_retrieval(nobody, MODEL, MixSpec("none"), TrainSpec(epochs=1, device="cpu"),
                        query="image", target="text")


def test_mixgen_batch_replaces_the_first_rows_only(data):
    rows = data.split_indices("train")[:16]
    batch = {"image": data.inputs["image"][rows].float(), "text": data.inputs["text"][rows]}
    out = mixgen_batch(batch, data.labels[rows], MixSpec("mixgen"),
                       torch.Generator().manual_seed(0), data.num_classes,
                       {"image": "image", "text": "text"}, 4)
    for m in batch:
        assert torch.equal(out[m][4:], batch[m][4:])
        assert not torch.equal(out[m][:4], batch[m][:4])
    own = (batch["text"][:4] != 0).sum(1)
    # MixGen text: the sample's own tokens, then its partner's
    for i in range(4):
        assert torch.equal(out["text"][i, :own[i]], batch["text"][i, :own[i]])


# --- the model and training ----------------------------------------------------------


def _run(data, method: str, epochs: int, hooks: TrainHooks | None = None, seed: int = 0,
         **kw):
    spec = TrainSpec(epochs=epochs, batch_size=32, seed=seed, device="cpu",
                     **{**SHORT, "lr": 1e-2})
    return train_retrieval(data, MODEL, MixSpec(method, **kw), spec, hooks, query="image",
                           target="text")


@pytest.mark.parametrize("method", METHODS)
def test_training_beats_the_untrained_model(data, method):
    untrained = _run(data, method, epochs=0).metrics  # same seed: the same initial towers
    trained = _run(data, method, epochs=8).metrics
    n = data.split_indices("test").numel()
    chance = sum(min(k, n) for k in KS) / len(KS) / n
    assert untrained["test_mean_recall"] < chance + 0.1, untrained
    assert trained["test_mean_recall"] > untrained["test_mean_recall"] + 0.15, trained
    for d in ("q2t", "t2q"):
        assert trained[f"test_class_p1_{d}"] > 3 / data.num_classes, trained
    assert all(math.isfinite(v) for v in trained.values())
    assert "test_mean_recall_query_noise" in trained  # image queries take noise
    assert "test_mean_recall_target_noise" not in trained  # token ids do not
    assert 0 < trained["temperature"] <= 1.0


def test_same_seed_same_metrics(data):
    a = _run(data, "m3mix", epochs=1).metrics
    torch.rand(1)
    b = _run(data, "m3mix", epochs=1).metrics
    c = _run(data, "m3mix", epochs=1, seed=1).metrics
    for m in (a, b, c):
        m.pop("train_time_s")
    assert a == b
    assert a != c


class Recorder(TrainHooks):
    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps: list[int] = []
        self.epochs: list[tuple[int, dict[str, float]]] = []
        self.saved: list[tuple[dict[str, torch.Tensor], dict[str, str]]] = []

    def on_progress(self, progress) -> None:
        self.steps.append(progress.step)

    def on_epoch_end(self, epoch, step, metrics) -> None:
        self.epochs.append((epoch, metrics))

    def on_checkpoint(self, epoch, tensors, metadata) -> None:
        self.saved.append((tensors, metadata))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def test_hooks_see_every_step_epoch_and_checkpoint(data):
    hooks = Recorder()
    result = _run(data, "mixgen", epochs=2, hooks=hooks)
    steps_per_epoch = -(-data.split_indices("train").numel() // 32)
    assert hooks.steps == list(range(1, 2 * steps_per_epoch + 1))
    assert [e for e, _ in hooks.epochs] == [1, 2]
    expected = {"train_loss", "temperature", "val_loss", "val_mean_recall",
                *(f"val_r{k}_{d}" for k in KS for d in ("q2t", "t2q")),
                "val_class_p1_q2t", "val_class_p1_t2q"}
    assert set(hooks.epochs[-1][1]) == expected
    assert result.metrics["val_mean_recall"] == hooks.epochs[-1][1]["val_mean_recall"]
    tensors, meta = hooks.saved[-1]
    assert meta["task"] == "retrieval" and (meta["query"], meta["target"]) == ("image", "text")
    spec = ModelSpec(**json.loads(meta["model_spec"]))
    shapes = {m: tuple(s) for m, s in json.loads(meta["input_shapes"]).items()}
    model = build_dual_encoder(spec, meta["query"], meta["target"], shapes,
                               json.loads(meta["modality_kinds"]),
                               json.loads(meta["vocab_sizes"]))
    model.load_state_dict(tensors, strict=True)
    assert 1.0 <= model.scale().item() <= MAX_LOGIT_SCALE


def test_should_stop_ends_the_run_between_steps(data):
    hooks = Recorder(stop_after=3)
    result = _run(data, "m3mix", epochs=5, hooks=hooks)
    assert result.status == "stopped"
    assert result.steps == 3 and hooks.steps == [1, 2, 3]
    assert result.epochs_completed == 0 and hooks.epochs == [] and hooks.saved == []


def test_image_audio_pairs_train_with_m3mix():
    ds = load_synthetic(num_samples=100, modalities=("image", "audio"), image_size=8,
                        audio_bins=8, audio_frames=8)
    result = train_retrieval(ds, MODEL, MixSpec("m3mix", alpha=0.5, lam_mode="sample"),
                             TrainSpec(epochs=1, batch_size=16, device="cpu"),
                             query="audio", target="image")
    assert result.status == "completed"
    assert {"test_mean_recall_query_noise", "test_mean_recall_target_noise"} <= set(
        result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())


def test_tabular_category_codes_get_embeddings():
    ds = load_synthetic(num_samples=100, modalities=("image", "tabular"), image_size=8,
                        tabular_features=4)
    tab = ds.inputs["tabular"].clone()
    tab[:, 3] = (ds.labels % 3 + 1).float()  # a category column, codes 1..3
    ds = dataclasses.replace(ds, inputs={**ds.inputs, "tabular": tab}, provenance={
        **ds.provenance,
        "tabular": {"tabular": {"columns": ["a", "b", "c"], "categorical": {"d": [0, 1, 2]}}}})
    hooks = Recorder()
    train_retrieval(ds, MODEL, MixSpec("m3mix"), TrainSpec(epochs=1, batch_size=16,
                                                            device="cpu"),
                    hooks, query="tabular", target="image")
    tensors, meta = hooks.saved[-1]
    assert json.loads(meta["categorical"]) == {"tabular": {"columns": [3], "cardinalities": [4]}}
    assert tensors["encoders.tabular.embeds.0.weight"].shape[0] == 4


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"query": "audio", "target": "text"}, "retrieval.query: 'audio' is not a modality"),
    ({"query": "image", "target": "image"}, "retrieval.target: must differ"),
    ({"query": "image", "target": "text", "method": "cutmix"},
     "augmentation.method: the retrieval task supports none, mixgen, m3mix, not 'cutmix'"),
    ({"query": "image", "target": "text", "batch_size": 1},
     "training.batch_size: retrieval needs at least 2 pairs"),
])
def test_bad_requests_name_the_field(data, kwargs, message):
    method = kwargs.pop("method", "none")
    spec = TrainSpec(epochs=1, batch_size=kwargs.pop("batch_size", 32), device="cpu")
    with pytest.raises(ValueError, match=message):
        train_retrieval(data, MODEL, MixSpec(method), spec, **kwargs)


def test_negative_m3mix_weight_is_refused(data):
    with pytest.raises(ValueError, match=r"retrieval\.m3mix_weight: must be a finite"):
        train_retrieval(data, MODEL, MixSpec("m3mix"), TrainSpec(epochs=1, device="cpu"),
                        query="image", target="text", m3mix_weight=-0.1)


def test_mixgen_needs_image_and_text():
    ds = load_synthetic(num_samples=100, modalities=("image", "tabular"), image_size=8)
    with pytest.raises(ValueError, match=r"augmentation\.method: mixgen needs an image "
                                         r"and a text"):
        train_retrieval(ds, MODEL, MixSpec("mixgen"), TrainSpec(epochs=1, device="cpu"),
                        query="image", target="tabular")

