"""Autoencoders and VAEs: each loss term against its formula, the product of
experts against a hand computation, latent mixup's one λ and partner, the
rules on methods and recon_weights, and a short training run's figures."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from app.ml.data.avmnist import load_avmnist
from app.ml.mixing import MixSpec, mix
from app.ml.models import ModelSpec, build_model
from app.ml.models.latent import (
    LatentModel,
    latent_method_problem,
    product_of_experts,
    recon_weight_problems,
)
from app.ml.representations import pca_2d, render_generation, render_reconstructions
from app.ml.training import TrainSpec, train
from app.ml.training.latent_loss import (
    kl_diag,
    kl_standard,
    present_mean,
    reconstruction_error,
)
from app.schemas.experiments import ModelSpecIn

SHAPES = {"image": (1, 8, 8), "audio": (1, 40, 32)}
KINDS = {"image": "image", "audio": "audio"}


def _model(kind: str = "multimodal_vae") -> LatentModel:
    torch.manual_seed(0)
    model = build_model(ModelSpec(kind=kind, width=4, depth=1, dim=8, latent_dim=3),
                        SHAPES, 10, kinds=KINDS)
    assert isinstance(model, LatentModel)
    return model.eval()


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(n, *s, generator=g) for m, s in SHAPES.items()}


def test_gaussian_reconstruction_is_half_the_summed_squared_error() -> None:
    recon, target = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)
    expected = torch.tensor([0.5 * float(((recon[i] - target[i]) ** 2).sum())
                             for i in range(4)])
    assert torch.allclose(reconstruction_error("image", recon, target), expected)
    # category-code columns of a tabular row are not numbers: left out
    rows, want = torch.randn(3, 4), torch.randn(3, 4)
    skipped = reconstruction_error("tabular", rows, want, skip_columns=[1, 3])
    assert torch.allclose(skipped, 0.5 * ((rows - want)[:, [0, 2]] ** 2).sum(dim=1))


def test_text_reconstruction_is_the_token_nll_without_padding() -> None:
    logits = torch.randn(2, 4, 7)
    ids = torch.tensor([[3, 5, 0, 0], [1, 2, 6, 4]])
    got = reconstruction_error("text", logits, ids)
    by_hand = [sum(-F.log_softmax(logits[i, t], dim=-1)[ids[i, t]].item()
                   for t in range(4) if ids[i, t] != 0) for i in range(2)]
    assert got.tolist() == pytest.approx(by_hand, rel=1e-5)


def test_kl_of_diagonal_gaussians_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(2)
    mu_q, mu_p = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    lv_q, lv_p = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    reference = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()),
                              Normal(mu_p, (0.5 * lv_p).exp())).sum(dim=-1)
    assert torch.allclose(kl_diag(mu_q, lv_q, mu_p, lv_p), reference, atol=1e-5)
    prior = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()),
                          Normal(torch.zeros(5, 4), torch.ones(5, 4))).sum(dim=-1)
    assert torch.allclose(kl_standard(mu_q, lv_q), prior, atol=1e-5)


def test_product_of_experts_by_hand() -> None:
    # two experts on one dimension: N(1, 0.5) and N(-2, 2), with the N(0, 1) prior
    mu = torch.tensor([[[1.0], [-2.0]], [[1.0], [-2.0]], [[1.0], [-2.0]]])
    logvar = torch.log(torch.tensor([[[0.5], [2.0]]] * 3))
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    mean, lv = product_of_experts(mu, logvar, mask)
    # both: precision 1 + 2 + 0.5 = 3.5; mean (2·1 + 0.5·(−2)) / 3.5 = 1/3.5
    assert mean[0].item() == pytest.approx(1 / 3.5)
    assert lv[0].item() == pytest.approx(-math.log(3.5))
    # the first alone: precision 3, mean 2/3
    assert mean[1].item() == pytest.approx(2 / 3)
    assert lv[1].item() == pytest.approx(-math.log(3.0))
    # none: the prior
    assert mean[2].item() == 0.0 and lv[2].item() == 0.0


def test_present_mean_counts_only_the_samples_that_have_the_modality() -> None:
    values = torch.tensor([1.0, 2.0, 9.0])
    assert present_mean(values, torch.tensor([True, True, False])).item() == 1.5
    assert present_mean(values, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_latent_mixup_mixes_the_latent_and_targets_with_one_lam_and_partner() -> None:
    model, batch = _model(), _batch()
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    spec = MixSpec(method="latent_mixup", lam_mode="sample")
    mixed = mix(batch, labels, spec, torch.Generator().manual_seed(3), 10, kinds=KINDS)
    assert mixed.latent and mixed.layer is None
    for m in SHAPES:  # the inputs are not touched: the latent is mixed
        assert torch.equal(mixed.inputs[m], batch[m])
    lam, index = mixed.lam, mixed.index
    assert not torch.equal(index, torch.arange(6)) and bool((lam < 1).any())
    onehot = F.one_hot(labels, 10).float()
    assert torch.allclose(mixed.targets,
                          lam[:, None] * onehot + (1 - lam[:, None]) * onehot[index])
    with torch.no_grad():
        z, _ = model.encode(batch)  # one latent for every modality of a sample
        expected = model.classifier(lam[:, None] * z + (1 - lam[:, None]) * z[index])
        logits = model(batch, mixed)
    assert torch.allclose(logits, expected, atol=1e-5)
    # manifold mixup at layer 2 is the same interpolation; layers 0 and 1 run too
    for layer in (0, 1, 2):
        manifold = mix(batch, labels, MixSpec(method="manifold_mixup", lam_mode="sample",
                                              manifold_layers=(layer,)),
                       torch.Generator().manual_seed(3), 10, kinds=KINDS)
        with torch.no_grad():
            out = model(batch, manifold)
        assert out.shape == (6, 10)
        if layer == 2:
            assert torch.allclose(out, expected, atol=1e-5)


def test_the_ae_averages_the_codes_of_the_modalities_present() -> None:
    model, batch = _model("multimodal_ae"), _batch(3)
    present = {"audio": torch.tensor([True, False, True])}
    with torch.no_grad():
        both, logvar = model.encode(batch, present)
        image_only, _ = model.encode({"image": batch["image"][1:2]})
    assert logvar is None
    assert torch.allclose(both[1], image_only[0], atol=1e-6)


def test_methods_and_recon_weights_have_one_rule_each() -> None:
    assert "has none" in (latent_method_problem("latent_mixup", "multimodal") or "")
    assert "mixes inside the model" in (latent_method_problem("mixup", "multimodal_vae") or "")
    assert latent_method_problem("latent_mixup", "multimodal_ae") is None
    assert latent_method_problem("manifold_mixup", "multimodal_vae") is None
    assert latent_method_problem("mixup", "cnn") is None
    assert recon_weight_problems({"image": 1.0, "text": 2.0}, ["image", "audio"]) == [
        ("recon_weights.text", "the dataset has no modality 'text'; it has image, audio")]


def test_the_stored_spec_holds_the_latent_fields_of_latent_kinds_only() -> None:
    plain = ModelSpecIn(kind="multimodal").model_dump()
    assert "latent_dim" not in plain and "beta" not in plain
    vae = ModelSpecIn(kind="multimodal_vae", latent_dim=4, recon_weights={"audio": 0.5})
    dumped = vae.model_dump()
    assert dumped["latent_dim"] == 4 and dumped["recon_weights"] == {"audio": 0.5}
    assert vae.to_ml().recon_weights == {"audio": 0.5}


def test_pca_projects_on_the_axis_of_largest_variance() -> None:
    g = torch.Generator().manual_seed(4)
    points = torch.randn(200, 3, generator=g) * torch.tensor([10.0, 1.0, 0.1])
    coords, shares = pca_2d(points)
    assert coords.shape == (200, 2) and shares[0] > 0.95 and shares[0] + shares[1] <= 1.0
    centred = points[:, 0] - points[:, 0].mean()
    assert abs(torch.corrcoef(torch.stack([coords[:, 0], centred]))[0, 1].item()) > 0.999


def test_pictures_decode_with_the_expected_rows() -> None:
    from io import BytesIO

    from PIL import Image

    model, batch = _model(), _batch(4)
    captions = [f"#{i}" for i in range(4)]
    recon = Image.open(BytesIO(render_reconstructions(model, batch, {}, KINDS, captions)))
    gen = Image.open(BytesIO(render_generation(model, batch, "audio", "image", KINDS,
                                               captions)))
    # a header, then 4 rows of 96-pixel panels with 6-pixel gaps
    assert recon.height == gen.height == 18 + 4 * (96 + 6) + 6
    assert recon.width > gen.width  # 4 panels (2 modalities × 2) against 3


def test_a_short_vae_run_reports_its_figures_and_refuses_latent_mixup_elsewhere() -> None:
    torch.set_num_threads(1)
    data = load_avmnist()
    spec = TrainSpec(epochs=1, batch_size=128, optimizer="adamw", lr=3e-3, device="cpu")
    model = ModelSpec(kind="multimodal_vae", width=4, depth=1, dim=8, latent_dim=4,
                      recon_weights={"audio": 0.1})
    result = train(data, model, MixSpec(method="latent_mixup"), spec)
    metrics = result.metrics
    for key in ("val_recon_image", "val_recon_audio", "val_kl", "val_elbo", "val_acc",
                "test_acc", "test_recon_audio", "test_recon_image_from_audio",
                "test_acc_without_image"):
        assert math.isfinite(metrics[key]), key
    assert metrics["val_elbo"] == pytest.approx(
        -(metrics["val_recon_image"] + metrics["val_recon_audio"] + metrics["val_kl"]),
        rel=1e-4)
    with pytest.raises(ValueError, match=r"augmentation\.method"):
        train(data, ModelSpec(kind="multimodal", width=4, depth=1, dim=8),
              MixSpec(method="latent_mixup"), spec)
    with pytest.raises(ValueError, match=r"model\.recon_weights\.text"):
        train(data, ModelSpec(kind="multimodal_ae", width=4, depth=1, dim=8,
                              recon_weights={"text": 1.0}), MixSpec(method="none"), spec)


def test_the_latent_quality_benchmark_validates_its_specs_and_tabulates() -> None:
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quality_latent.py"
    spec = importlib.util.spec_from_file_location("quality_latent_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    request = module.experiment_spec("latent_mixup", 1.0, 2, 1)
    assert request.model.kind == "multimodal_vae"
    assert request.augmentation.to_mix_spec().method == "latent_mixup"
    assert request.training.to_ml().seed == 1
    runs = {"none": [{key: 0.5 for key, _ in module.FIGURES},
                     {key: 0.7 for key, _ in module.FIGURES}]}
    table = module.table(runs)
    assert "| none | 0.600 ± 0.141 |" in table
    assert [label for _, label in module.FIGURES] == [
        "acc", "acc −image", "acc −audio", "recon image", "recon audio", "image from audio",
        "audio from image", "KL", "ELBO"]

    # the synthetic grid: the built-in's options and the model validate, every
    # modality gets its without / recon columns and a cross-modal row per source
    data_request = module.dataset_spec(2, 0.0, "synthetic")
    assert data_request.source.name == "synthetic"
    options = data_request.source.options.model_dump()
    modalities = module.DATASETS["synthetic"]
    assert options["seed"] == 2 and tuple(options["modalities"]) == modalities
    assert all(0 < options["signal"][m] < 1 for m in modalities)
    with pytest.raises(ValueError, match="label_noise"):
        module.dataset_spec(0, 0.4, "synthetic")
    request = module.experiment_spec("none", 1.0, 2, 2, "synthetic")
    assert request.model.kind == "multimodal_vae"
    assert request.model.recon_weights == module.SYNTHETIC_MODEL["recon_weights"]
    columns = module.figures(modalities, cross=False)
    keys = [key for key, _ in columns]
    assert keys == ["test_acc", *(f"test_acc_without_{m}" for m in modalities),
                    *(f"test_recon_{m}" for m in modalities), "test_kl", "test_elbo"]
    cross = {f"test_recon_{b}_from_{a}" for a in modalities for b in modalities if a != b}
    fake = [{**{key: 0.5 for key in keys}, **{key: 3.0 for key in cross}},
            {**{key: 0.7 for key in keys}, **{key: 5.0 for key in cross}}]
    runs = {"none": fake, "latent_mixup": fake}
    table = module.table(runs, columns)
    assert "| method | acc | acc −image | acc −text | acc −audio | acc −tabular |" in table
    assert "| latent_mixup | 0.600 ± 0.141 |" in table and "from" not in table
    matrix = module.cross_table(runs, modalities)
    assert matrix.splitlines()[0] == "| method | from | image | text | audio | tabular |"
    assert "| none | text | 4.00 ± 1.41 | — | 4.00 ± 1.41 | 4.00 ± 1.41 |" in matrix
    assert len(matrix.splitlines()) == 2 + 2 * len(modalities)


def test_a_vae_trains_on_two_processes() -> None:
    from app.ml.training.launch import launch_local
    from tests.unit import ddp_ranks

    data = load_avmnist()

    def lead(ranks):  # type: ignore[no-untyped-def]
        return train(data, ddp_ranks.VAE, ddp_ranks.LATENT_MIXING, ddp_ranks.recipe(2, 1),
                     ranks=ranks)

    mine, others = launch_local(lead, ddp_ranks.follow_vae, (1,), 2, torch.device("cpu"),
                                120.0)
    assert mine.status == "completed" and others[1]["status"] == "completed"
    assert others[1]["steps"] == mine.steps and others[1]["hook_calls"] == 0
    assert math.isfinite(mine.metrics["val_elbo"]) and "test_acc" in mine.metrics


def test_an_autoencoder_is_not_cropped_unless_asked() -> None:
    from app.ml.data.synthetic import load_synthetic

    torch.set_num_threads(1)
    data = load_synthetic(num_samples=120, num_classes=3, modalities=["image", "tabular"])
    model = ModelSpec(kind="multimodal_vae", width=4, depth=1, dim=8, latent_dim=4)

    def loss(augment: tuple[str, ...] | None) -> float:
        spec = TrainSpec(epochs=1, batch_size=32, device="cpu", augment=augment)
        return train(data, model, MixSpec(method="none"), spec).metrics["train_loss"]

    default = loss(None)
    assert default == loss(())            # the default is no augmentation at all
    assert default != loss(("crop",))     # and crop, asked for, is applied


def test_a_diverging_run_raises_naming_the_figure_and_the_remedy() -> None:
    from app.ml.data import load_builtin

    torch.set_num_threads(1)
    # SGD at lr 0.1 (the default recipe) on a VAE's summed reconstruction of digits
    spec = TrainSpec(epochs=1, batch_size=256, device="cpu")
    with pytest.raises(ValueError, match=r"^training diverged in epoch 1: val_loss is inf; "
                                         r"try a smaller training\.lr \(now 0\.1\)"):
        train(load_builtin("digits", {}, {}),
              ModelSpec(kind="multimodal_vae", width=4, depth=1, dim=8, latent_dim=2),
              MixSpec(method="none"), spec)
