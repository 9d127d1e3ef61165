"""Checks of an augmentation spec against the dataset it will mix."""

from typing import Any

from app.ml.mixing import DEFAULT_OPS, MODALITY_OPS
from app.schemas.augmentation import AugmentationSpec
from app.services.errors import FieldError, FieldErrorCollector

_NEEDS = {"cutmix": ({"image", "video"}, "an image or video modality"),
          "mixup_cutmix": ({"image", "video"}, "an image or video modality")}


def modality_kinds(summary: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["kind"] for m in summary["modalities"]}


_SPECTROGRAM_OPS = ("specmix", "spec_cutmix")


def modality_shapes(summary: dict[str, Any]) -> dict[str, list[int]]:
    return {m["name"]: list(m["shape"]) for m in summary["modalities"]}


def check_against_dataset(spec: AugmentationSpec, kinds: dict[str, str],
                          loc: tuple[str | int, ...],
                          shapes: dict[str, list[int]] | None = None) -> None:
    """Raise FieldError (naming the field under ``loc``; several at once as
    ``FieldErrors``) if the spec cannot mix a dataset with these modality kinds
    (and per-sample shapes, when given)."""
    have = ", ".join(f"{m} ({k})" for m, k in kinds.items())
    if spec.method == "m3mix":
        raise FieldError((*loc, "method"), "m3mix mixes a retrieval model's embeddings, not "
                                           "the inputs: it has no preview and needs task "
                                           "retrieval")
    found = FieldErrorCollector()
    for modality, op in spec.ops.items():
        if modality not in kinds:
            found.add((*loc, "ops", modality),
                      f"the dataset has no modality {modality!r}; it has {have}")
        elif kinds[modality] not in MODALITY_OPS[op].kinds:
            allowed = ", ".join(sorted(MODALITY_OPS[op].kinds))
            found.add((*loc, "ops", modality),
                      f"op {op!r} applies to {allowed}, but {modality!r} is {kinds[modality]}")
        elif op in _SPECTROGRAM_OPS and shapes is not None and len(shapes[modality]) < 2:
            found.add((*loc, "ops", modality),
                      f"op {op!r} needs a spectrogram (F, T) per sample; {modality!r} is a "
                      f"waveform of shape {shapes[modality]}")
    for i, modality in enumerate(spec.modalities or ()):
        if modality not in kinds:
            found.add((*loc, "modalities", i),
                      f"the dataset has no modality {modality!r}; it has {have}")
    mixed = {m: k for m, k in kinds.items() if not spec.modalities or m in spec.modalities}
    mixed_kinds = set(mixed.values())
    if spec.method in _NEEDS:
        needed, words = _NEEDS[spec.method]
        if not mixed_kinds & needed:
            found.add((*loc, "method"), f"{spec.method} needs {words}; mixing {have}")
    if spec.method == "mixgen" and not {"image", "text"} <= mixed_kinds:
        found.add((*loc, "method"), f"mixgen needs an image and a text modality; mixing {have}")
    unknown_kind = [m for m, k in mixed.items() if k not in DEFAULT_OPS]
    if unknown_kind:
        found.add((*loc, "modalities"), f"no mixing op for modality {unknown_kind[0]!r}")
    found.raise_if_any()


def check_manifold_layers(spec: AugmentationSpec, model_layers: int,
                          loc: tuple[str | int, ...]) -> None:
    if spec.method == "manifold_mixup" and max(spec.manifold_layers) > model_layers:
        raise FieldError((*loc, "manifold_layers"),
                         f"the model mixes at layers 0..{model_layers} (0 = inputs)")
