"""Where a run's weights start (app.services.initial_weights): the spec fields, the
URI rules, header-only reading, the refusal message, and the retrieval loop's
``init_weights`` (CPU, no database)."""

import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save, save_file

from app.ml.data.synthetic import load_synthetic
from app.ml.mixing import MixSpec
from app.ml.models import ModelSpec, build_model, match_state
from app.ml.retrieval import train_retrieval
from app.ml.training import TrainHooks, TrainSpec
from app.schemas.experiments import ExperimentCreate, ModelSpecIn
from app.services import initial_weights as iw
from app.services import limits, sources
from app.services.errors import FieldError
from app.settings import Settings
from app.storage import ArtifactStore
from tests.recipes import SHORT

DIGITS = {"modalities": [{"name": "image", "kind": "image", "shape": [1, 8, 8],
                          "dtype": "uint8"}],
          "classes": [{"name": str(i), "count": 1} for i in range(10)],
          "split_sizes": {"train": 100, "val": 10, "test": 10}}


def _cnn(classes: int = 10) -> torch.nn.Module:
    return build_model(ModelSpec(width=8, depth=2), (1, 8, 8), classes)


def _source(**kw: object) -> iw.WeightsSource:
    return iw.WeightsSource(str(kw.pop("label", "w")), iw.WEIGHTS_LOC,
                            int(kw.pop("max_bytes", 10**8)), **kw)  # type: ignore[arg-type]


# --- the spec ------------------------------------------------------------------------

def test_both_starts_at_once_are_refused_at_init_from_run() -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpecIn(weights="store:runs/x/checkpoint.safetensors", init_from_run=uuid.uuid4())
    (error,) = info.value.errors()
    assert error["loc"] == ("init_from_run",) and "not both" in error["msg"]


@pytest.mark.parametrize("kind", [{}, {"kind": "wide_resnet", "depth": 10},
                                  {"kind": "multimodal"}])
def test_starts_are_stored_when_set_and_never_reach_app_ml(kind: dict) -> None:
    run = uuid.uuid4()
    plain = ModelSpecIn(**kind).model_dump(mode="json")
    assert "weights" not in plain and "init_from_run" not in plain
    spec = ModelSpecIn(**kind, init_from_run=run)
    assert spec.model_dump(mode="json") == {**plain, "init_from_run": str(run)}
    with_file = ModelSpecIn(**kind, weights="file:///w.safetensors").model_dump(mode="json")
    assert with_file == {**plain, "weights": "file:///w.safetensors"}
    assert spec.to_ml() == ModelSpecIn(**kind).to_ml()
    # the worker re-reads the stored spec
    again = ExperimentCreate.model_validate({"dataset_id": uuid.uuid4(),
                                             "model": spec.model_dump(mode="json")})
    assert again.model.init_from_run == run


# --- URIs and files --------------------------------------------------------------------

def test_weights_uris_follow_the_dataset_rules_at_their_own_field(tmp_path: Path) -> None:
    roots = tmp_path / "imports"
    roots.mkdir()
    settings = Settings(import_roots=str(roots))
    (roots / "w.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "out.safetensors").write_bytes(b"x")
    (roots / "w.pt").write_bytes(b"x")
    ok = sources.resolve(settings, (roots / "w.safetensors").as_uri(), loc=iw.WEIGHTS_LOC,
                         suffixes=iw.SUFFIXES, max_bytes=100)
    assert ok.path == (roots / "w.safetensors").resolve()
    for uri, words in (((tmp_path / "out.safetensors").as_uri(), "outside the folders"),
                       ((roots / "w.pt").as_uri(), "expected .safetensors"),
                       ("http://h/w.safetensors", "unsupported scheme"),
                       ((roots / "w.safetensors").as_uri(), "too large")):
        with pytest.raises(FieldError) as info:
            sources.resolve(settings, uri, loc=iw.WEIGHTS_LOC, suffixes=iw.SUFFIXES,
                            max_bytes=99)
        assert info.value.loc == iw.WEIGHTS_LOC and words in info.value.message
    with pytest.raises(FieldError) as info:
        sources.resolve(Settings(import_roots=""), (roots / "w.safetensors").as_uri(),
                        loc=iw.WEIGHTS_LOC, suffixes=iw.SUFFIXES)
    assert "turned off" in info.value.message and "upload" not in info.value.message


def test_shapes_come_from_the_header_of_a_file_a_store_key_or_an_fsspec_uri(
        tmp_path: Path) -> None:
    tensors = {k: v.contiguous() for k, v in _cnn().state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    save_file(tensors, tmp_path / "w.safetensors")
    store = ArtifactStore((tmp_path / "store").as_uri())
    store.put("runs/r/checkpoint.safetensors", save(tensors))
    memory = fsspec.filesystem("memory")
    memory.pipe("/weights/w.safetensors", save(tensors))
    for source in (_source(path=tmp_path / "w.safetensors"),
                   _source(key="runs/r/checkpoint.safetensors"),
                   _source(uri="memory://weights/w.safetensors")):
        assert iw.read_shapes(source, store) == shapes
        loaded = iw.load_tensors(source, store)
        assert loaded.keys() == tensors.keys()
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pytest.raises(FieldError, match="too large"):
        iw.read_shapes(_source(uri="memory://weights/w.safetensors", max_bytes=10), store)


def test_a_file_that_is_not_safetensors_is_a_field_error(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x80\x02pickle, not safetensors" * 4)
    for call in (iw.read_shapes, iw.load_tensors):
        with pytest.raises(FieldError) as info:
            call(_source(label="file:///w.safetensors", path=bad), store)
        assert info.value.loc == iw.WEIGHTS_LOC and "file:///w.safetensors" in info.value.message
    with pytest.raises(FieldError, match="cannot read"):
        iw.read_shapes(_source(uri="memory://nowhere/w.safetensors"), store)


# --- matching against the run's model ----------------------------------------------------

def test_the_meta_model_has_the_state_the_worker_builds() -> None:
    request = ExperimentCreate.model_validate({"dataset_id": uuid.uuid4(),
                                               "model": {"width": 8, "depth": 2}})
    meta = limits.meta_model(request, DIGITS).state_dict()
    real = _cnn().state_dict()
    assert {k: tuple(v.shape) for k, v in meta.items()} == \
        {k: tuple(v.shape) for k, v in real.items()}
    assert all(v.is_meta for v in meta.values())
    assert limits.model_parameters(request, DIGITS) == sum(p.numel() for p in
                                                          _cnn().parameters())
    # another head size still loads the rest: allowed, reported at run time
    partial = match_state(meta, _cnn(classes=3).state_dict())
    assert sorted(partial.mismatched) == ["head.1.bias", "head.1.weight"]
    assert len(partial.loaded) == len(meta) - 2


def test_the_refusal_names_a_few_mismatches() -> None:
    model = {f"block{i}.weight": (4, 4) for i in range(5)}
    match = match_state(model, {**{f"block{i}.weight": (8, 4) for i in range(5)},
                                "extra": (1,)})
    message = iw.no_fit_message("store:runs/r/w.safetensors", match, list(model))
    assert message.startswith("none of the 6 tensors of store:runs/r/w.safetensors fits")
    assert "block0.weight: the model's [4, 4], the file's [8, 4]" in message
    assert "2 more" in message and "1 are not in the model (extra)" in message
    assert "block4.weight:" not in message
    empty = match_state(model, {})
    assert iw.no_fit_message("w", empty, list(model)) == "w holds no tensors"


# --- the retrieval loop takes init_weights ------------------------------------------------

class _Last(TrainHooks):
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def on_checkpoint(self, epoch, tensors, metadata) -> None:  # type: ignore[no-untyped-def]
        self.tensors = tensors


@pytest.mark.usefixtures("one_torch_thread")
def test_retrieval_starts_from_init_weights_and_reports_them() -> None:
    data = load_synthetic(num_samples=120, num_classes=4, modalities=("image", "text"),
                          image_size=8, text_length=8)
    model = ModelSpec(kind="multimodal", dim=16, width=8, depth=2, text_dim=16)
    spec = TrainSpec(epochs=1, batch_size=32, device="cpu", **SHORT)
    hooks = _Last()
    first = train_retrieval(data, model, MixSpec("none"), spec, hooks, query="image",
                            target="text")
    assert first.init is None
    again = train_retrieval(data, model, MixSpec("none"), TrainSpec(epochs=0, device="cpu"),
                            query="image", target="text", init_weights=hooks.tensors)
    assert again.init == {"loaded": len(hooks.tensors), "mismatched": {}, "missing": [],
                          "unexpected": []}
    # nothing trained: the second run evaluates the first one's model
    assert again.metrics["test_mean_recall"] == pytest.approx(
        first.metrics["test_mean_recall"], abs=1e-6)
