"""Image models by kind (PreAct ResNet-18, Wide ResNet, torchvision/timm by name),
their manifold mixup points, the multimodal image towers, weight loading by name and
shape, and the model spec schema."""

import copy
import uuid
from dataclasses import asdict

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from app.ml.mixing import Mixed
from app.ml.mixing.ops import interpolate
from app.ml.models import (
    ImageEncoder,
    ModelSpec,
    ModelSpecError,
    build_model,
    image_mixing_layers,
    load_matching,
    match_state,
    timm_available,
    torchvision_available,
)
from app.ml.models import image_models as image_models_module
from app.ml.models.vision_libs import MissingPackage
from app.ml.models.weights import load_matching_file
from app.ml.safetensors_meta import read_header, tensor_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_torchvision = pytest.mark.skipif(not torchvision_available(),
                                       reason="torchvision (the vision extra) is not installed")
needs_timm = pytest.mark.skipif(not timm_available(),
                                reason="timm (the vision extra) is not installed")

# small enough for a shared CPU; each kind as the trainer builds it
SPECS = {
    "cnn": ModelSpec(kind="cnn", width=4, depth=2),
    "preact_resnet18": ModelSpec(kind="preact_resnet18", width=4),
    "wide_resnet": ModelSpec(kind="wide_resnet", depth=10, widen=1, dropout=0.1),
    "torchvision": ModelSpec(kind="torchvision", name="resnet18"),
    "timm": ModelSpec(kind="timm", name="resnet18"),
}
LAYERS = {"cnn": 2, "preact_resnet18": 4, "wide_resnet": 3, "torchvision": 4, "timm": 5}
KINDS = [pytest.param(k, marks=needs_torchvision) if k == "torchvision"
         else pytest.param(k, marks=needs_timm) if k == "timm" else k for k in SPECS]


def _mixed(n: int, lam: float, layer: int | None) -> Mixed:
    index = torch.roll(torch.arange(n), 1)  # every sample has another partner
    return Mixed(inputs={}, targets=torch.zeros(n, 3), lam=torch.full((n,), lam), index=index,
                 layer=layer)


def _model(kind: str, shape: tuple[int, ...] = (3, 32, 32), classes: int = 3,
           seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPECS[kind], shape, classes)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_each_kind_builds_runs_and_learns(kind, shape):
    model = _model(kind, shape)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 3)
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert model.mixing_layers == LAYERS[kind] == image_mixing_layers(SPECS[kind], shape)


@pytest.mark.parametrize("kind", KINDS)
def test_manifold_mixup_interpolates_at_every_layer(kind):
    model = _model(kind).eval()  # eval: every sample's output is its own
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        for layer in range(model.mixing_layers + 1):
            # λ = 1 keeps each sample; λ = 0 swaps in the partner's hidden state
            torch.testing.assert_close(model(x, _mixed(4, 1.0, layer)), plain)
            partner = _mixed(4, 0.0, layer)
            torch.testing.assert_close(model(x, partner), plain[partner.index],
                                       rtol=1e-4, atol=1e-5)
            assert not torch.allclose(model(x, _mixed(4, 0.3, layer)), plain, atol=1e-4)
        with pytest.raises(ValueError, match="manifold layer"):
            model(x, _mixed(4, 0.5, model.mixing_layers + 1))


@pytest.mark.parametrize("kind", KINDS)
def test_layer_zero_mixes_the_inputs(kind):
    model = _model(kind).eval()
    x, mixed = torch.randn(4, 3, 32, 32), _mixed(4, 0.3, 0)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mixed),
                                   model(interpolate(x, x[mixed.index], mixed.lam)))


@needs_torchvision
def test_a_copy_mixes_on_its_own():
    # the mixing hook lives for one forward only: copies (EMA, SWA) behave alike
    model = _model("torchvision").eval()
    twin = copy.deepcopy(model)
    x, mixed = torch.randn(4, 3, 32, 32), _mixed(4, 0.3, 2)
    with torch.no_grad():
        torch.testing.assert_close(twin(x, mixed), model(x, mixed))
        torch.testing.assert_close(twin(x), model(x))
    assert not model.net.layer2._forward_hooks


def test_paper_parameter_counts():
    with torch.device("meta"):
        preact = build_model(ModelSpec(kind="preact_resnet18"), (3, 32, 32), 10)
        wrn = build_model(ModelSpec(kind="wide_resnet", depth=28, widen=10), (3, 32, 32), 10)
    assert ModelSpec(kind="preact_resnet18").width == 64  # the paper's, by default
    assert sum(p.numel() for p in preact.parameters()) == 11_171_146
    assert ModelSpec(kind="wide_resnet").depth == 28
    assert sum(p.numel() for p in wrn.parameters()) == 36_479_194


def test_spec_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="kind must be one of cnn, preact_resnet18") as exc:
        ModelSpec(kind="resnet")
    assert exc.value.field == "kind"
    with pytest.raises(ModelSpecError, match="depth must be 6n\\+4"):
        ModelSpec(kind="wide_resnet", depth=27)
    with pytest.raises(ModelSpecError, match="name is required"):
        ModelSpec(kind="timm")
    with pytest.raises(ModelSpecError, match="name is only used"):
        ModelSpec(kind="cnn", name="resnet18")
    # stored before the new fields existed: still loads, with the old numbers
    old = {"kind": "cnn", "width": 8, "depth": 2, "dropout": 0.0}
    assert ModelSpec(**old) == ModelSpec(kind="cnn", width=8, depth=2)


@needs_torchvision
def test_unknown_library_name_is_a_field_error():
    with pytest.raises(ModelSpecError, match="'resnet19' is not a torchvision model name; "
                                             "did you mean resnet18") as exc:
        build_model(ModelSpec(kind="torchvision", name="resnet19"), (3, 32, 32), 10)
    assert exc.value.field == "name"


@needs_timm
def test_unknown_timm_name_is_a_field_error():
    with pytest.raises(ModelSpecError, match="is not a timm model name"):
        build_model(ModelSpec(kind="timm", name="no_such_net"), (3, 32, 32), 10)


def test_missing_library_is_a_clear_error(monkeypatch):
    def missing() -> None:
        raise MissingPackage("torchvision")

    monkeypatch.setattr(image_models_module, "import_torchvision", missing)
    with pytest.raises(ModelSpecError, match="kind 'torchvision' needs the torchvision "
                                             "package") as exc:
        build_model(ModelSpec(kind="torchvision", name="resnet18"), (3, 32, 32), 10)
    assert exc.value.field == "kind"
    with pytest.raises(ModelSpecError, match="image_encoder 'torchvision' needs"):
        ImageEncoder(3, 8, (8, 8), backbone="torchvision", name="resnet18")


@needs_timm
def test_timm_vit_takes_the_image_size_and_mixes_at_its_blocks():
    model = build_model(ModelSpec(kind="timm", name="vit_tiny_patch16_224"), (1, 32, 32), 3)
    assert model.mixing_layers == 12
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32), _mixed(2, 0.5, 6)).shape == (2, 3)


@needs_torchvision
def test_torchvision_without_stages_mixes_at_the_input_only():
    model = build_model(ModelSpec(kind="torchvision", name="mobilenet_v3_small"), (1, 8, 8), 3)
    assert model.mixing_layers == 0
    assert model.eval()(torch.randn(2, 1, 8, 8), _mixed(2, 0.5, 0)).shape == (2, 3)


# --- multimodal image towers ---------------------------------------------------------

TOWERS = [("cnn", {}), ("preact_resnet18", {"width": 4}), ("wide_resnet", {"depth": 10}),
          pytest.param("torchvision", {"name": "resnet18"}, marks=needs_torchvision),
          pytest.param("timm", {"name": "resnet18"}, marks=needs_timm)]


@pytest.mark.parametrize(("tower", "fields"), TOWERS)
def test_every_image_kind_is_a_multimodal_tower(tower, fields):
    enc = ImageEncoder(1, 8, (8, 8), backbone=tower, width=fields.get("width", 4),
                       depth=fields.get("depth", 2), name=fields.get("name"), widen=1)
    assert enc(torch.randn(2, 1, 8, 8)).shape == (2, 8)
    spec = ModelSpec(kind="multimodal", image_encoder=tower, dim=8, widen=1,
                     **{"width": 4, "depth": 2, **fields})
    model = build_model(spec, {"image": (3, 8, 8), "tabular": (4,)}, 3)
    out = model({"image": torch.randn(2, 3, 8, 8), "tabular": torch.randn(2, 4)})
    assert out.shape == (2, 3)


@needs_torchvision
def test_stored_resnet18_tower_keeps_its_layout():
    # checkpoints of image_encoder resnet18 hold torchvision's ImageNet stem
    enc = ImageEncoder(1, 8, (32, 32), backbone="resnet18")
    assert enc.net.conv1.weight.shape == (64, 1, 7, 7)
    assert isinstance(enc.net.maxpool, torch.nn.MaxPool2d)
    small = ImageEncoder(1, 8, (32, 32), backbone="torchvision", name="resnet18")
    assert small.net.net.conv1.weight.shape == (64, 1, 3, 3)


# --- weights -------------------------------------------------------------------------

def test_weights_round_trip_through_a_file(tmp_path):
    model = _model("preact_resnet18").eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    assert tensor_shapes(path) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fresh = _model("preact_resnet18", seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(fresh(x), model(x))
    match = load_matching_file(fresh, path)
    assert match.complete and len(match.loaded) == len(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_a_wrong_head_is_reported_and_the_rest_loads(tmp_path):
    source = _model("preact_resnet18", classes=5)
    tensors = dict(source.state_dict())
    tensors["extra.weight"] = torch.zeros(2)
    del tensors["conv1.weight"]
    path = tmp_path / "w.safetensors"
    save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in tensors.items()}, path, metadata={"source": "test"})
    # checked from the header alone, against a model that holds no memory
    with torch.device("meta"):
        meta = build_model(SPECS["preact_resnet18"], (3, 32, 32), 10)
    expected = match_state(meta.state_dict(), tensor_shapes(path))
    assert read_header(path)["__metadata__"] == {"source": "test"}
    target = _model("preact_resnet18", classes=10, seed=1)
    head_before = target.head[1].weight.clone()
    match = load_matching_file(target, path)
    assert match == expected
    assert match.mismatched == {"head.1.weight": ((10, 32), (5, 32)),
                                "head.1.bias": ((10,), (5,))}
    assert match.missing == ["conv1.weight"] and match.unexpected == ["extra.weight"]
    assert not match.complete
    torch.testing.assert_close(target.head[1].weight, head_before)  # left alone
    block = "layers.0.0.conv1.weight"
    assert block in match.loaded and target.state_dict()[block].dtype == torch.float32
    torch.testing.assert_close(target.state_dict()[block],
                               source.state_dict()[block].half().float())
    assert match.to_json() == {
        "loaded": len(match.loaded),
        "mismatched": {"head.1.bias": {"expected": [10], "got": [5]},
                       "head.1.weight": {"expected": [10, 32], "got": [5, 32]}},
        "missing": ["conv1.weight"], "unexpected": ["extra.weight"]}


@needs_torchvision
def test_plain_library_weights_load_with_a_prefix():
    tv = image_models_module.import_torchvision()
    plain = tv.models.resnet18(weights=None, num_classes=3)
    model = build_model(ModelSpec(kind="torchvision", name="resnet18"), (3, 32, 32), 3)
    match = load_matching(model, plain.state_dict(), prefix="net.")
    # only the stem differs: the CIFAR stem is 3x3
    assert list(match.mismatched) == ["net.conv1.weight"]
    assert not match.missing and not match.unexpected


def test_header_reader_refuses_what_is_not_safetensors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05")
    with pytest.raises(ValueError, match="too short"):
        tensor_shapes(bad)
    bad.write_bytes((10**12).to_bytes(8, "little"))
    with pytest.raises(ValueError, match="limit"):
        tensor_shapes(bad)
    bad.write_bytes((4).to_bytes(8, "little") + b"[1]x")
    with pytest.raises(ValueError, match="no valid safetensors header"):
        tensor_shapes(bad)
    bad.write_bytes((4).to_bytes(8, "little") + b"[1] ")
    with pytest.raises(ValueError, match="not a JSON object"):
        tensor_shapes(bad)
    bad.write_bytes((20).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="truncated"):
        tensor_shapes(bad)


# --- the schema ----------------------------------------------------------------------

def _spec_in(**fields):
    from app.schemas.experiments import ModelSpecIn

    return ModelSpecIn.model_validate(fields)


def test_schema_unknown_kind_lists_the_kinds():
    with pytest.raises(ValidationError) as exc:
        _spec_in(kind="resnet")
    text = str(exc.value)
    assert "kind" in text and "'preact_resnet18'" in text and "'timm'" in text


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "torchvision"}, "name: required for kind 'torchvision'"),
    ({"kind": "multimodal", "image_encoder": "timm"}, "name: required for image_encoder"),
    ({"kind": "cnn", "name": "resnet18"}, "name: only torchvision and timm"),
    ({"kind": "multimodal", "name": "resnet18"}, "name: only torchvision and timm"),
    ({"kind": "wide_resnet", "depth": 27}, "depth: must be 6n\\+4"),
    ({"kind": "cnn", "depth": 9}, "depth: at most 8"),
])
def test_schema_cross_field_checks_name_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        _spec_in(**fields)


def test_schema_stores_each_kind_with_its_own_fields():
    assert _spec_in().model_dump() == {"kind": "cnn", "width": 16, "depth": 3, "dropout": 0.0}
    assert _spec_in(kind="cnn", fusion="late").model_dump() == {
        "kind": "cnn", "width": 16, "depth": 3, "dropout": 0.0}
    assert _spec_in(kind="preact_resnet18").model_dump() == {
        "kind": "preact_resnet18", "width": 64, "dropout": 0.0}
    assert _spec_in(kind="wide_resnet", widen=4).model_dump() == {
        "kind": "wide_resnet", "depth": 28, "widen": 4, "dropout": 0.0}
    assert _spec_in(kind="torchvision", name="resnet18").model_dump() == {
        "kind": "torchvision", "name": "resnet18"}
    assert _spec_in(kind="timm", name="resnet18").model_dump() == {
        "kind": "timm", "name": "resnet18", "dropout": 0.0}
    multimodal = _spec_in(kind="multimodal").model_dump()
    assert "name" not in multimodal and "widen" not in multimodal
    tower = _spec_in(kind="multimodal", image_encoder="wide_resnet", depth=10).model_dump()
    assert tower["widen"] == 10 and "name" not in tower
    for fields in ({}, {"kind": "preact_resnet18", "width": 8},
                   {"kind": "wide_resnet", "depth": 16, "widen": 2},
                   {"kind": "timm", "name": "resnet18"},
                   {"kind": "multimodal", "image_encoder": "torchvision", "name": "resnet18"}):
        stored = _spec_in(**fields).model_dump()
        # stored, then validated again (a sweep, a rerun), then built
        assert _spec_in(**stored).model_dump() == stored
        built = _spec_in(**stored).to_ml()
        assert ModelSpec(**asdict(built)) == built  # as a checkpoint stores it


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_limit_counts_every_kind(kind):
    from app.schemas.experiments import ExperimentCreate
    from app.services.limits import model_parameters

    fields = {"cnn": {"width": 4, "depth": 2}, "preact_resnet18": {},
              "wide_resnet": {"depth": 28, "widen": 10}, "torchvision": {"name": "resnet18"},
              "timm": {"name": "resnet18"}}[kind]
    request = ExperimentCreate(dataset_id=uuid.uuid4(), model={"kind": kind, **fields})
    summary = {"modalities": [{"name": "image", "kind": "image", "shape": [3, 32, 32]}],
               "classes": [str(i) for i in range(10)]}
    with torch.device("meta"):
        expected = build_model(request.model.to_ml(), (3, 32, 32), 10)
    count = sum(p.numel() for p in expected.parameters())
    assert model_parameters(request, summary) == count
    if kind == "preact_resnet18":
        assert count == 11_171_146


def test_a_plain_library_state_dict_loads_under_the_wrapper():
    from app.ml.models.weights import best_match, load_matching

    model = build_model(ModelSpec(kind="torchvision", name="resnet18"), (3, 32, 32), 10)
    plain = {k.removeprefix("net."): v.clone() + 1 for k, v in model.state_dict().items()}
    prefix, match = best_match(model.state_dict(), plain)
    assert prefix == "net." and match.complete
    assert load_matching(model, plain).complete
    assert all(torch.equal(v, plain[k.removeprefix("net.")])
               for k, v in model.state_dict().items())
