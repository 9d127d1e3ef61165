"""Seeded, reproducible previews of what a mixing spec does to a dataset.

``preview_mix`` draws ``n`` samples of a split and mixes **every** modality of
the dataset in one ``mix`` call (one partner and one λ per sample, as in
training), then reports, per modality, source A, source B, the mix and what
the op did (regions, masks, whether the model mixes it itself). Images are
scaled to [0, 1] before mixing; other modalities are mixed as stored.

What a preview says is what ran, per sample: ``mixup_cutmix`` cuts some
samples and interpolates the others, so each sample carries its own op
(``ModalityMix.op_at``), and only a sample that was cut has a region
(``region_at``); a sample with λ = 1 took nothing from its partner and is
"not mixed" whatever op was planned.
"""

from dataclasses import dataclass, field

import torch

from app.ml.data.prepared import PreparedDataset
from app.ml.mixing import MixSpec, mix
from app.ml.mixing.text import PAD_ID

IMAGE_KINDS = ("image", "video")
# region layouts that are a box (lo, lo, hi, hi): empty when nothing was cut
_BOX_OPS = ("cutmix", "spec_cutmix")


@dataclass
class ModalityMix:
    """One modality of a preview; tensors are (n, ...) on the CPU."""

    name: str
    kind: str
    op: str | None  # the planned op; None: not mixed (method none, or not in ``modalities``)
    a: torch.Tensor
    b: torch.Tensor
    mixed: torch.Tensor  # equals ``a`` when the op is deferred or the modality is not mixed
    region: torch.Tensor | None = None  # per-sample boxes / spans / bands, in the op's layout
    mask: torch.Tensor | None = None  # text: attention mask of the mix (n, T) bool
    deferred: bool = False  # the model mixes it (embedding_mixup): there is no mixed input
    # the op each sample ran (None: not mixed, λ = 1); empty: ``op`` for every sample
    sample_ops: list[str | None] = field(default_factory=list)

    def op_at(self, i: int) -> str | None:
        """The op sample ``i`` ran; None when it was not mixed."""
        return self.sample_ops[i] if self.sample_ops else self.op

    def region_at(self, i: int) -> list[int] | None:
        """Sample ``i``'s region, only when its op cut one: None for a sample
        interpolated instead (``mixup_cutmix``), not mixed, or with an empty box."""
        if self.region is None or self.op_at(i) != self.op:
            return None
        region = [int(v) for v in self.region[i].tolist()]
        if self.op in _BOX_OPS and not (region[2] > region[0] and region[3] > region[1]):
            return None
        return region

    @property
    def waveform(self) -> bool:
        """Audio stored as a waveform (N, L) rather than a spectrogram (N, F, T) or
        (N, C, F, T), the shapes the spectrogram ops take."""
        return self.kind == "audio" and self.a.dim() == 2

    def token_sources(self, i: int) -> list[tuple[int, int, str]]:
        """Text: (position, token id, "a" | "b") of each non-padding token of the mix."""
        ids = self.mixed[i]
        positions = torch.nonzero(ids != PAD_ID).flatten().tolist()
        op = self.op_at(i)
        if op is None or self.deferred:
            return [(p, int(ids[p]), "a") for p in positions]
        if op == "token_cutmix" and self.region is not None:
            start, end = self.region[i, :2].tolist()
            return [(p, int(ids[p]), "b" if start <= p < end else "a") for p in positions]
        if op == "concat":
            own = int((self.a[i] != PAD_ID).sum())
            return [(p, int(ids[p]), "a" if p < own else "b") for p in positions]
        # any other op: whichever source holds that token at that position (A first)
        return [(p, int(ids[p]), "a" if int(ids[p]) == int(self.a[i, p]) else "b")
                for p in positions]


@dataclass
class PreviewBatch:
    indices_a: list[int]
    indices_b: list[int]
    lam: list[float]
    targets: torch.Tensor  # (n, K) soft targets
    # the first image modality's cutmix box per sample (None: not cut); None: no cutmix
    boxes: list[list[int] | None] | None
    modalities: dict[str, ModalityMix] = field(default_factory=dict)
    method: str = "none"
    layer: int | None = None  # manifold mixup: the hidden layer the model mixes at

    @property
    def deferred(self) -> list[str]:
        return [m for m, mm in self.modalities.items() if mm.deferred]

    def _first_image(self) -> ModalityMix:
        for mm in self.modalities.values():
            if mm.kind == "image":
                return mm
        raise AttributeError("this preview has no image modality")

    # the image-only view earlier callers used
    @property
    def images_a(self) -> torch.Tensor:
        return self._first_image().a

    @property
    def images_b(self) -> torch.Tensor:
        return self._first_image().b

    @property
    def mixed(self) -> torch.Tensor:
        return self._first_image().mixed


def _scaled(data: PreparedDataset, modality: str, chosen: torch.Tensor) -> torch.Tensor:
    lo, hi = data.value_range(modality)
    return (data.inputs[modality][chosen].float() - lo) / max(hi - lo, 1e-12)


def preview_mix(data: PreparedDataset, spec: MixSpec, seed: int, n: int,
                split: str = "train") -> PreviewBatch:
    """Draw ``n`` samples of ``split`` and mix all their modalities; same seed,
    same result. Raises ``ValueError`` (from ``mix``) when the spec cannot mix
    this dataset."""
    generator = torch.Generator().manual_seed(seed)
    host_generator = torch.Generator().manual_seed(seed)
    pool = data.split_indices(split)
    chosen = pool[torch.randperm(pool.shape[0], generator=generator)[:n]]
    kinds = dict(data.modality_kinds)
    batch = {m: (_scaled(data, m, chosen) if kinds[m] in IMAGE_KINDS
                 else data.inputs[m][chosen]) for m in data.inputs}
    out = mix(batch, data.labels[chosen], spec, generator, data.num_classes, kinds=kinds,
              host_generator=host_generator, multilabel=data.multilabel)
    index = out.index
    unmixed = (out.lam >= 1.0).tolist()  # took nothing from the partner, whatever the op
    modalities = {}
    for m, x in batch.items():
        mixed = out.inputs[m]
        if kinds[m] in IMAGE_KINDS:
            mixed = mixed.clamp(0.0, 1.0)
        region = out.regions.get(m)
        modalities[m] = ModalityMix(
            name=m, kind=kinds[m], op=out.ops.get(m), a=x, b=x[index], mixed=mixed,
            region=region.long() if region is not None else None, mask=out.masks.get(m),
            deferred=m in out.deferred,
            sample_ops=[None if skip else op
                        for op, skip in zip(out.sample_ops(m), unmixed, strict=True)])
    # the modality ``out.boxes`` comes from: the first image modality with a region
    image_cut = next((modalities[m] for m in out.regions if kinds[m] in IMAGE_KINDS), None)
    return PreviewBatch(
        indices_a=chosen.tolist(),
        indices_b=chosen[index].tolist(),
        lam=out.lam.tolist(),
        targets=out.targets,
        boxes=([image_cut.region_at(i) for i in range(len(unmixed))]
               if image_cut is not None else None),
        modalities=modalities,
        method=out.method,
        layer=out.layer,
    )
