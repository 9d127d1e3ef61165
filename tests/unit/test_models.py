"""Unit tests for app.ml.models: encoders, fusion heads, the multimodal model."""

import pytest
import torch

from app.ml.mixing import Mixed, MixSpec, embedding_mixup, mix
from app.ml.models import (
    AudioEncoder,
    ImageEncoder,
    LogMel,
    ModelSpec,
    MultimodalModel,
    SmallCNN,
    TabularEncoder,
    TextEncoder,
    VideoEncoder,
    build_fusion,
    build_model,
    torchvision_available,
)
from app.ml.models.encoders import mel_filterbank

FUSIONS = ["early", "late", "attention", "tensor", "gated"]
DIM, K, N = 8, 3, 6


def _mixed(n: int, lam: float = 0.3, layer: int | None = None,
           deferred: tuple[str, ...] = ()) -> Mixed:
    g = torch.Generator().manual_seed(0)
    return Mixed(inputs={}, targets=torch.zeros(n, K), lam=torch.full((n,), lam),
                 index=torch.randperm(n, generator=g), deferred=deferred, layer=layer)


def test_image_encoder_shapes():
    enc = ImageEncoder(3, DIM, (8, 8), width=4, depth=2)
    assert enc(torch.randn(N, 3, 8, 8)).shape == (N, DIM)


def test_resnet18_without_torchvision_is_a_clear_error():
    if torchvision_available():
        enc = ImageEncoder(1, DIM, (32, 32), backbone="resnet18")
        assert enc(torch.randn(2, 1, 32, 32)).shape == (2, DIM)
    else:
        with pytest.raises(ValueError, match="torchvision"):
            ImageEncoder(3, DIM, (8, 8), backbone="resnet18")


@pytest.mark.parametrize("pooling", ["mean", "temporal_conv"])
def test_video_encoder_shapes(pooling):
    enc = VideoEncoder(ImageEncoder(3, DIM, (8, 8), width=4, depth=1), DIM, pooling)
    assert enc(torch.randn(N, 5, 3, 8, 8)).shape == (N, DIM)


def test_video_mean_is_the_mean_of_frame_features():
    frames = ImageEncoder(3, DIM, (8, 8), width=4, depth=1).eval()
    enc = VideoEncoder(frames, DIM, "mean").eval()
    clip = torch.randn(2, 4, 3, 8, 8)
    expected = torch.stack([frames(clip[:, t]) for t in range(4)], 1).mean(1)
    torch.testing.assert_close(enc(clip), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_text_encoder_ignores_padding(kind):
    torch.manual_seed(0)
    enc = TextEncoder(20, DIM, 6, kind, text_dim=8, heads=2).eval()
    ids = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 0, 0, 0, 0]])
    out = enc(ids)
    assert out.shape == (2, DIM)
    # a longer padded width gives the same features (padding is masked, positions unchanged)
    wider = torch.cat([ids, torch.zeros(2, 0, dtype=torch.long)], 1)
    torch.testing.assert_close(enc(wider), out)
    # changing the embedding of the pad token does not matter... (it is zeros and masked)
    with torch.no_grad():
        enc.embed.weight[0].fill_(5.0)
    torch.testing.assert_close(enc(ids), out)
    # an all-padding row is finite
    assert torch.isfinite(enc(torch.zeros(2, 6, dtype=torch.long))).all()


@pytest.mark.parametrize("kind", ["mean", "transformer"])
def test_text_encoder_deferred_embedding_mixup(kind):
    torch.manual_seed(0)
    enc = TextEncoder(20, DIM, 6, kind, text_dim=8, heads=2).eval()
    ids = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 0, 0, 0, 0], [9, 1, 2, 3, 4, 5]])
    mixed = _mixed(3, 0.3, deferred=("text",))
    out = enc(ids, mixed)
    # by hand: embed, (positions), embedding_mixup, encode over the union mask, pool
    emb = enc.embed(ids)
    if kind == "transformer":
        emb = emb + enc.pos[:, :6]
    emb, mask = embedding_mixup(emb, ids != 0, mixed.lam, mixed.index)
    h = enc.encoder(emb, src_key_padding_mask=~mask) if kind == "transformer" else emb
    expected = enc.proj((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    torch.testing.assert_close(out, expected)
    # not deferred (another modality's name): no mixing
    torch.testing.assert_close(enc(ids, _mixed(3, 0.3, deferred=("text_b",))), enc(ids))


def test_text_encoder_through_mix():
    torch.manual_seed(0)
    enc = TextEncoder(20, DIM, 6, "mean", text_dim=8).eval()
    ids = torch.randint(1, 20, (N, 6))
    ids[:, 4:] = 0
    mixed = mix({"text": ids}, torch.arange(N) % K, MixSpec("mixup"),
                torch.Generator().manual_seed(1), K)
    assert mixed.deferred == ("text",)
    emb, mask = embedding_mixup(enc.embed(ids), ids != 0, mixed.lam, mixed.index)
    assert torch.equal(mask, mixed.masks["text"])
    torch.testing.assert_close(enc(ids, mixed), enc.proj((emb * mask[..., None]).sum(1)
                                                         / mask.sum(1, keepdim=True)))


def test_mel_filterbank_and_logmel():
    fb = mel_filterbank(201, 16, 16_000)
    assert fb.shape == (201, 16) and (fb >= 0).all() and (fb.sum(0) > 0).all()
    out = LogMel(n_mels=16)(torch.randn(2, 1600))
    assert out.shape[:3] == (2, 1, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1600,), (8, 8), (2, 8, 8)])
def test_audio_encoder_shapes(shape):
    enc = AudioEncoder(shape, DIM, width=4, depth=2, n_mels=16)
    assert enc(torch.randn(N, *shape)).shape == (N, DIM)


def test_tabular_encoder_with_categorical_columns():
    enc = TabularEncoder(5, DIM, categorical=[1, 3], cardinalities=[4, 3])
    x = torch.randn(N, 5)
    x[:, 1] = torch.randint(0, 4, (N,)).float()
    x[:, 3] = torch.randint(0, 3, (N,)).float()
    assert enc(x).shape == (N, DIM)
    assert TabularEncoder(5, DIM)(torch.randn(N, 5)).shape == (N, DIM)


def _feats(modalities, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, DIM, generator=g) for m in modalities}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_shapes_and_split(fusion):
    torch.manual_seed(0)
    mods = ["a", "b", "c"]
    head = build_fusion(fusion, mods, DIM, K, heads=2, rank=3).eval()
    feats, present = _feats(mods), torch.ones(N, 3, dtype=torch.bool)
    logits = head(feats, present)
    assert logits.shape == (N, K) and torch.isfinite(logits).all()
    torch.testing.assert_close(head.classify(head.represent(feats, present), present), logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_absent_modality_does_not_reach_the_sample(fusion):
    torch.manual_seed(0)
    mods = ["a", "b", "c"]
    head = build_fusion(fusion, mods, DIM, K, heads=2, rank=3).eval()
    present = torch.ones(N, 3, dtype=torch.bool)
    present[0, 1] = False  # sample 0 lacks b
    present[1] = torch.tensor([False, False, False])  # sample 1 has nothing: still finite
    feats = _feats(mods)
    other = dict(feats, b=feats["b"] + 10 * torch.randn(N, DIM))
    before, after = head(feats, present), head(other, present)
    assert torch.isfinite(before).all()
    torch.testing.assert_close(before[0], after[0])
    assert not torch.allclose(before[2], after[2])  # present b matters


def _model(fusion: str, modality_dropout: float = 0.0, text_encoder: str = "mean"):
    spec = ModelSpec(kind="multimodal", fusion=fusion, dim=DIM, width=4, depth=1, text_dim=8,
                     heads=2, text_encoder=text_encoder, modality_dropout=modality_dropout)
    shapes = {"image": (3, 8, 8), "text": (6,), "audio": (1, 8, 8), "tabular": (5,)}
    return build_model(spec, shapes, K, vocab_sizes={"text": 20})


def _inputs(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (n, 6), generator=g)
    ids[:, 4:] = 0
    return {"image": torch.randn(n, 3, 8, 8, generator=g), "text": ids,
            "audio": torch.randn(n, 1, 8, 8, generator=g),
            "tabular": torch.randn(n, 5, generator=g)}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_multimodal_missing_modality_input_is_ignored(fusion):
    torch.manual_seed(0)
    model = _model(fusion, text_encoder="transformer").eval()
    x = _inputs()
    present = {"image": torch.tensor([False] + [True] * (N - 1))}
    changed = dict(x, image=x["image"] + 5 * torch.randn_like(x["image"]))
    a, b = model(x, None, present), model(changed, None, present)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1:], b[1:])
    # leaving a modality out of the inputs is the same as marking it absent for all
    all_absent = {"text": torch.zeros(N, dtype=torch.bool)}
    no_text = {m: v for m, v in x.items() if m != "text"}
    torch.testing.assert_close(model(x, None, all_absent), model(no_text))


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_multimodal_manifold_layers(fusion, layer):
    torch.manual_seed(0)
    model = _model(fusion).eval()
    assert model.mixing_layers == 2
    x = _inputs()
    out = model(x, _mixed(N, 0.4, layer=layer))
    assert out.shape == (N, K) and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x))
    # λ = 1 is no mixing at any layer
    torch.testing.assert_close(model(x, _mixed(N, 1.0, layer=layer)), model(x))
    with pytest.raises(ValueError, match="manifold layer"):
        model(x, _mixed(N, 0.4, layer=3))


def test_manifold_layer_1_mixes_features():
    torch.manual_seed(0)
    model = _model("early").eval()
    x = _inputs()
    mixed = _mixed(N, 0.3, layer=1)
    feats = model.encode(x, None, N, torch.device("cpu"))
    lam = 0.3
    mixed_feats = {m: lam * f + (1 - lam) * f[mixed.index] for m, f in feats.items()}
    present = torch.ones(N, 4, dtype=torch.bool)
    torch.testing.assert_close(model(x, mixed), model.fusion(mixed_feats, present))


def test_modality_dropout_never_drops_everything():
    torch.manual_seed(0)
    model = _model("early", modality_dropout=0.9)
    present = torch.ones(4000, 4, dtype=torch.bool)
    present[:1000, :2] = False
    kept = model.drop_modalities(present)
    assert kept.any(dim=1).all()
    assert not (kept & ~present).any()  # never revives an absent modality
    assert 0.05 < kept[1000:].float().mean() < 0.4  # most are dropped at p = 0.9
    # p = 0 (or eval) keeps everything
    model.eval()
    x = _inputs()
    torch.testing.assert_close(model(x), model(x))


def test_build_model_cnn_unchanged():
    model = build_model(ModelSpec(width=8, depth=2), (1, 8, 8), 10)
    assert isinstance(model, SmallCNN)
    keys = set(model.state_dict())
    assert "blocks.0.0.weight" in keys and "head.1.weight" in keys
    from_mapping = build_model(ModelSpec(width=8, depth=2), {"image": (1, 8, 8), "text": (4,)}, 10)
    assert set(from_mapping.state_dict()) == keys
    assert isinstance(_model("late"), MultimodalModel)


def test_model_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="fusion"):
        ModelSpec(kind="multimodal", fusion="nope")
    with pytest.raises(ValueError, match="modality_dropout"):
        ModelSpec(kind="multimodal", modality_dropout=1.0)
    with pytest.raises(ValueError, match="kind"):
        ModelSpec(kind="rnn")


# ------------------------------------------- missing modalities under mixing


def _pair_mixed(lam: float, ops: dict[str, str] | None = None,
                layer: int | None = None) -> Mixed:
    """Samples 0 and 1 swapped with each other, the rest unmixed."""
    index = torch.arange(N)
    index[0], index[1] = 1, 0
    lam_t = torch.ones(N)
    lam_t[:2] = lam
    return Mixed(inputs={}, targets=torch.zeros(N, K), lam=lam_t, index=index,
                 ops=dict(ops or {}), layer=layer)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_inputs_mixed_with_a_partner_that_has_the_modality_count_as_having_it(fusion):
    torch.manual_seed(0)
    model = _model(fusion).eval()
    x = _inputs()
    present = {"image": torch.tensor([False] + [True] * (N - 1))}  # sample 0 lacks image
    x["image"][0] = 0.0  # as the trainer zeroes it
    mixed_image = dict(x, image=x["image"] + 3.0 * torch.randn_like(x["image"]))
    ops = {m: "mixup" for m in x}
    # sample 0 was mixed with 1, who has an image: the mixed image reaches sample 0
    a = model(x, _pair_mixed(0.6, ops), present)
    b = model(mixed_image, _pair_mixed(0.6, ops), present)
    assert not torch.allclose(a[0], b[0])
    # unless images were not mixed (left out of ops), or sample 0 kept all of itself
    no_image = {m: op for m, op in ops.items() if m != "image"}
    torch.testing.assert_close(model(x, _pair_mixed(0.6, no_image), present)[0],
                               model(mixed_image, _pair_mixed(0.6, no_image), present)[0])
    torch.testing.assert_close(model(x, _pair_mixed(1.0, ops), present)[0],
                               model(mixed_image, _pair_mixed(1.0, ops), present)[0])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_manifold_layer_0_never_mixes_an_absent_input_into_its_partner(fusion):
    torch.manual_seed(0)
    model = _model(fusion).eval()
    x = _inputs()
    present = {"audio": torch.tensor([False] + [True] * (N - 1))}  # sample 0 lacks audio
    other = dict(x, audio=x["audio"].clone())
    other["audio"][0] = 1e3 * torch.randn_like(other["audio"][0])  # whatever it stores
    mixed = _pair_mixed(0.5, layer=0)
    torch.testing.assert_close(model(x, mixed, present), model(other, mixed, present))


def test_tabular_encoder_mixes_category_embeddings():
    torch.manual_seed(0)
    enc = TabularEncoder(4, DIM, categorical=[1, 3], cardinalities=[5, 3],
                         name="tab").eval()
    x = torch.tensor([[0.5, 1.0, -1.0, 2.0], [1.5, 4.0, 0.3, 0.0],
                      [0.1, 2.0, 0.2, 1.0], [-0.4, 3.0, 1.1, 2.0]])
    mixed = _pair_mixed(0.3, ops={"tab": "mixup"})
    mixed.lam, mixed.index = mixed.lam[:4], mixed.index[:4]
    lam = mixed.lam[:, None]

    def embedded(rows: torch.Tensor) -> list[torch.Tensor]:
        return [enc.embeds[0](rows[:, 1].long()), enc.embeds[1](rows[:, 3].long())]

    own, partner = embedded(x), embedded(x[mixed.index])
    parts = [x[:, [0, 2]]] + [lam * a + (1 - lam) * b for a, b in zip(own, partner,
                                                                        strict=True)]
    torch.testing.assert_close(enc(x, mixed), enc.mlp(torch.cat(parts, dim=1)))
    # a mix that did not touch this modality leaves its codes alone
    elsewhere = _pair_mixed(0.3, ops={"image": "mixup"})
    elsewhere.lam, elsewhere.index = mixed.lam, mixed.index
    torch.testing.assert_close(enc(x, elsewhere), enc(x))
    # manifold layer 0 mixes the numbers here too
    at_inputs = _pair_mixed(0.3, layer=0)
    at_inputs.lam, at_inputs.index = mixed.lam, mixed.index
    numbers = lam * x[:, [0, 2]] + (1 - lam) * x[mixed.index][:, [0, 2]]
    torch.testing.assert_close(enc(x, at_inputs),
                               enc.mlp(torch.cat([numbers, *parts[1:]], dim=1)))


def test_tabular_encoder_rejects_bad_columns():
    with pytest.raises(ValueError, match="distinct indices"):
        TabularEncoder(3, DIM, categorical=[3], cardinalities=[2])
    with pytest.raises(ValueError, match="same length"):
        TabularEncoder(3, DIM, categorical=[1], cardinalities=[])


def test_multilabel_late_fusion_averages_logits():
    torch.manual_seed(0)
    head = build_fusion("late", ["a", "b"], DIM, K, multilabel=True).eval()
    feats, present = _feats(["a", "b"]), torch.ones(N, 2, dtype=torch.bool)
    present[0, 1] = False
    h = head.represent(feats, present)
    per_head = torch.stack([hd(h[:, i]) for i, hd in enumerate(head.heads)], dim=1)
    w = head.weights(present)
    torch.testing.assert_close(head.classify(h, present), (w[..., None] * per_head).sum(1))
    torch.testing.assert_close(head.classify(h, present)[0], per_head[0, 0])
    single = build_fusion("late", ["a", "b"], DIM, K).eval()
    assert (single(feats, present) <= 0).all()  # log-probabilities: never above 0
