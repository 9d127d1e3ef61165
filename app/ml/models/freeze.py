"""Freezing named parts of a model for transfer (``model.freeze``).

The parts a model has, by name:

* ``multimodal``: ``<modality>_encoder`` for each modality the model reads
  (``model.encoders[<modality>]``, e.g. ``image_encoder``, ``audio_encoder``)
  and ``fusion`` (the fusion head, its classifier included);
* an image kind (``cnn``, ``preact_resnet18``, ``wide_resnet``, ``torchvision``,
  ``timm``): ``backbone``, every layer but the classifier, which is the model's
  last ``nn.Linear`` in module order (``head`` of the SmallCNN and the ResNets,
  ``fc`` of torchvision's ResNets, the classifier of a timm model);
* ``multimodal_ae`` / ``multimodal_vae``: ``<modality>_encoder`` (the encoder
  and its projection into the shared latent, ``posteriors[<modality>]``),
  ``<modality>_decoder`` and ``classifier`` (the head on the latent) — so a
  model trained on one modality can keep its encoders and learn to decode
  another.

A frozen part's parameters get ``requires_grad = False``, so the optimizer
(``build_optimizer`` skips them) never holds them and weight decay cannot move
them; and the part stays in eval mode while the rest trains (a forward
pre-hook on each of its modules), so its BatchNorm layers use and keep their
running statistics and its dropout is off: every tensor of its state stays
what it started as. The hooks are not part of the state, so checkpoints are
those of an unfrozen model.
"""

from collections.abc import Sequence
from typing import Any

from torch import nn

from app.ml.models.spec import IMAGE_KINDS, LATENT_KINDS

FUSION = "fusion"
BACKBONE = "backbone"
CLASSIFIER = "classifier"
ENCODER_SUFFIX = "_encoder"
DECODER_SUFFIX = "_decoder"


def part_names(kind: str, modalities: Sequence[str]) -> list[str]:
    """The parts a model of ``kind`` reading ``modalities`` can freeze."""
    if kind in IMAGE_KINDS:
        return [BACKBONE]
    if kind in LATENT_KINDS:
        return ([f"{m}{ENCODER_SUFFIX}" for m in modalities]
                + [f"{m}{DECODER_SUFFIX}" for m in modalities] + [CLASSIFIER])
    return [f"{m}{ENCODER_SUFFIX}" for m in modalities] + [FUSION]


def freeze_problem(parts: Sequence[str], available: Sequence[str]) -> str | None:
    """Why ``parts`` cannot be frozen on a model with parts ``available``; None if
    they can. One rule for the API's check and for ``freeze``."""
    unknown = [p for p in parts if p not in available]
    if unknown:
        return (f"the model has no part {unknown[0]!r}; its parts are "
                + ", ".join(available))
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        return f"lists {twice[0]!r} twice"
    if len(available) > 1 and set(parts) == set(available):
        return "freezes every part of the model: nothing would train"
    return None


def _modules(model: nn.Module, part: str) -> list[tuple[str, nn.Module]]:
    """(state-name prefix, module) of each top module of ``part`` in ``model``."""
    if part == BACKBONE:
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("model.freeze: the model has no linear classifier to keep training")
        head = linears[-1]
        # the largest modules that neither are the classifier nor hold it
        return [(name, m) for name, m in model.named_modules()
                if name and not _holds(name, head) and _holds(name.rpartition(".")[0], head)]
    if part in (FUSION, CLASSIFIER):
        return [(part, model.get_submodule(part))]
    if part.endswith(DECODER_SUFFIX):
        modality = part.removesuffix(DECODER_SUFFIX)
        return [(f"decoders.{modality}", model.get_submodule(f"decoders.{modality}"))]
    modality = part.removesuffix(ENCODER_SUFFIX)
    names = [f"encoders.{modality}"]
    if hasattr(model, "posteriors"):  # a latent model's projection belongs to its encoder
        names.append(f"posteriors.{modality}")
    return [(name, model.get_submodule(name)) for name in names]


def _holds(prefix: str, name: str) -> bool:
    """Whether module ``prefix`` is module ``name`` or one of its ancestors."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _stay_in_eval(module: nn.Module, args: Any) -> None:
    # model.train() each epoch sets every module back to training mode; a frozen
    # one returns to eval before it computes anything
    if module.training:
        module.train(False)


def freeze(model: nn.Module, parts: Sequence[str], available: Sequence[str]) -> list[str]:
    """Freeze ``parts`` of ``model`` (see the module docstring); the state names of
    the tensors that are frozen, sorted. ``ValueError`` naming ``model.freeze``
    for parts the model does not have, or when nothing would be left to train."""
    problem = freeze_problem(list(parts), list(available))
    if problem:
        raise ValueError(f"model.freeze: {problem}")
    frozen: list[str] = []
    for part in parts:
        for prefix, top in _modules(model, part):
            for p in top.parameters():
                p.requires_grad_(False)
            for m in top.modules():
                m.register_forward_pre_hook(_stay_in_eval)
            frozen.extend(f"{prefix}.{name}" for name in top.state_dict())
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model.freeze: freezes every parameter of the model: nothing would "
                         "train")
    return sorted(frozen)
