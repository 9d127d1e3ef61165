"""Previews of mixed samples: JSON description and PNG rendering, per modality."""

import contextlib
import json
import uuid
from typing import Any
from urllib.parse import urlencode

from app.ml.data import PreparedDataset
from app.ml.preview import IMAGE_KINDS, ModalityMix, PreviewBatch, preview_mix
from app.ml.render import (
    TextRow,
    render_mix_grid,
    render_spectrograms,
    render_table,
    render_tokens,
    render_video_strips,
)
from app.schemas.datasets import (
    ModalityPreview,
    PreviewOut,
    PreviewRequest,
    PreviewSample,
    TabularValues,
    TokenOut,
)
from app.services import augmentation
from app.services.errors import FieldError

MAX_JSON_TOKENS = 512  # text positions listed per sample
MAX_PNG_TOKENS = 128  # tokens drawn per sample
MAX_FEATURES = 32  # tabular features listed and drawn
_SPEC_OPS = ("specmix", "spec_cutmix")
_SPEC_LAYOUT = {"specmix": "bands", "spec_cutmix": "box"}


def default_modality(data: PreparedDataset) -> str:
    """The modality a preview shows when none is named: the first image (or
    video), else the first."""
    for name, kind in data.modality_kinds.items():
        if name in data.inputs and kind in IMAGE_KINDS:
            return name
    return next(iter(data.inputs))


def check_modality(data: PreparedDataset, modality: str | None,
                   loc: tuple[str | int, ...] = ("query", "modality")) -> str:
    if modality is None:
        return default_modality(data)
    if modality not in data.inputs:
        raise FieldError(loc, f"the dataset has no modality {modality!r}; it has "
                              + ", ".join(data.inputs))
    return modality


def compute(data: PreparedDataset, request: PreviewRequest, where: str = "body") -> PreviewBatch:
    """Mix ``request.n`` samples of every modality; problems with the spec for
    this dataset are a FieldError under ``where`` (body or query)."""
    kinds = {m: data.modality_kinds[m] for m in data.inputs}
    augmentation.check_against_dataset(request, kinds, (where,))
    for modality, op in request.ops.items():
        if op in _SPEC_OPS and data.inputs[modality].dim() < 3:
            raise FieldError((where, "ops", modality),
                             f"{op} needs a spectrogram (F, T) or (C, F, T); {modality!r} is a "
                             "waveform; use mixup")
    try:
        return preview_mix(data, request.to_mix_spec(), request.seed, request.n, request.split)
    except ValueError as exc:
        raise FieldError((where, "method"), str(exc)) from exc


def png_query(request: PreviewRequest, sample: int | None = None,
              modality: str | None = None) -> str:
    """The preview spec as query parameters, so the PNG URL is self-describing:
    lists and maps as compact JSON, cutmix_minmax as ``min,max``."""
    params: dict[str, Any] = request.model_dump(mode="json", exclude_defaults=True)
    params.update(method=request.method, seed=request.seed, n=request.n)
    for key, value in list(params.items()):
        if isinstance(value, bool):
            params[key] = "true" if value else "false"
        elif isinstance(value, dict | list):
            params[key] = json.dumps(value, separators=(",", ":"))
    if request.cutmix_minmax is not None:
        params["cutmix_minmax"] = f"{request.cutmix_minmax[0]},{request.cutmix_minmax[1]}"
    if sample is not None:
        params["sample"] = sample
    if modality is not None:
        params["modality"] = modality
    return urlencode(params)


def parse_png_query(query: dict[str, str]) -> dict[str, Any]:
    """The spec fields of a PNG URL's query, the inverse of ``png_query``."""
    params: dict[str, Any] = {k: v for k, v in query.items() if k not in ("sample", "modality")}
    for key, value in params.items():
        if value.startswith(("[", "{")):
            with contextlib.suppress(ValueError):  # else left as is: validation names it
                params[key] = json.loads(value)
    minmax = params.get("cutmix_minmax")
    if isinstance(minmax, str):
        params["cutmix_minmax"] = minmax.split(",")
    return params


def _vocab(data: PreparedDataset, modality: str) -> list[str] | None:
    vocab = data.provenance.get("vocab")
    if isinstance(vocab, dict):
        vocab = vocab.get(modality)
    return vocab if isinstance(vocab, list) else None


def _word(vocab: list[str] | None, token: int) -> str:
    if vocab is not None and 0 <= token < len(vocab):
        return str(vocab[token])
    return f"#{token}"


def _words(vocab: list[str] | None, ids: Any, limit: int) -> list[str]:
    return [_word(vocab, int(t)) for t in ids[:limit].tolist() if t != 0]


def _features(data: PreparedDataset, modality: str, dims: int) -> list[str]:
    names = data.provenance.get("feature_names")
    if isinstance(names, dict):
        names = names.get(modality)
    if isinstance(names, list) and len(names) == dims:
        return [str(n) for n in names]
    return [f"x{d}" for d in range(dims)]


def _modality_json(data: PreparedDataset, mm: ModalityMix, i: int, url: str) -> ModalityPreview:
    out = ModalityPreview(kind=mm.kind, op=mm.op_at(i), deferred=mm.deferred, image_url=url,
                          region=mm.region_at(i))
    if mm.kind == "text":
        vocab = _vocab(data, mm.name)
        out.tokens_a = _words(vocab, mm.a[i], MAX_JSON_TOKENS)
        out.tokens_b = _words(vocab, mm.b[i], MAX_JSON_TOKENS)
        if not mm.deferred:
            out.tokens = [TokenOut(token=_word(vocab, t), id=t, position=p, source=s)
                          for p, t, s in mm.token_sources(i) if p < MAX_JSON_TOKENS]
        if mm.mask is not None:
            out.mask = mm.mask[i, :MAX_JSON_TOKENS].tolist()
    elif mm.kind == "video":
        out.frames = int(mm.a.shape[1])
    elif mm.kind == "tabular":
        a, b, mixed = (x[i].reshape(-1).float() for x in (mm.a, mm.b, mm.mixed))
        dims = a.shape[0]
        shown = min(dims, MAX_FEATURES)
        out.values = TabularValues(
            features=_features(data, mm.name, dims)[:shown],
            a=[round(v, 6) for v in a[:shown].tolist()],
            b=[round(v, 6) for v in b[:shown].tolist()],
            mixed=[round(v, 6) for v in mixed[:shown].tolist()],
            truncated=shown < dims)
    return out


def describe(dataset_id: uuid.UUID, data: PreparedDataset, request: PreviewRequest,
             batch: PreviewBatch, base_url: str) -> PreviewOut:
    names = data.class_names
    png = f"{base_url}/v1/datasets/{dataset_id}/preview.png?"
    samples = []
    # rows as the user's data numbers them (the sharded form groups them by split)
    shown_a, shown_b = data.source_index(batch.indices_a), data.source_index(batch.indices_b)
    for i, (a, b) in enumerate(zip(batch.indices_a, batch.indices_b, strict=True)):
        row = batch.targets[i]
        mixture = {names[k]: round(float(row[k]), 6) for k in row.nonzero().flatten().tolist()}
        modalities = {m: _modality_json(data, mm, i, png + png_query(request, i, m))
                      for m, mm in batch.modalities.items()}
        samples.append(PreviewSample(
            index_a=shown_a[i], index_b=shown_b[i], lam=batch.lam[i],
            label_a=data.label_name(a), label_b=data.label_name(b),
            label_mixture=mixture,
            box=batch.boxes[i] if batch.boxes is not None else None,
            image_url=png + png_query(request, sample=i),
            modalities=modalities))
    return PreviewOut(
        dataset_id=dataset_id, spec=request, samples=samples,
        image_url=png + png_query(request),
        image_urls={m: png + png_query(request, modality=m) for m in batch.modalities},
        ops={m: mm.op for m, mm in batch.modalities.items() if mm.op is not None},
        deferred=batch.deferred, layer=batch.layer)


def _caption(data: PreparedDataset, batch: PreviewBatch, i: int, mm: ModalityMix) -> str:
    names = data.class_names
    top = batch.targets[i].topk(min(2, batch.targets.shape[1]))
    mixture = ", ".join(f"{names[k]}: {w:.2f}" for w, k in
                        zip(top.values.tolist(), top.indices.tolist(), strict=True) if w > 0)
    # what this sample ran: mixup_cutmix cuts some samples and interpolates others
    op = mm.op_at(i) or "not mixed"
    if mm.deferred and mm.op_at(i) is not None:
        op += " (in the model)"
    if batch.layer is not None:
        op = f"manifold mixup at layer {batch.layer}"
    if batch.method == "latent_mixup":  # inputs untouched: an autoencoder mixes its latent
        op = "latent mixup (in the model's latent)"
    a, b = data.source_index([batch.indices_a[i], batch.indices_b[i]])
    return (f"#{a} + #{b}\n"
            f"lambda = {batch.lam[i]:.3f}\n{mixture}\n{mm.name}: {op}")


def render(data: PreparedDataset, batch: PreviewBatch, sample: int | None = None,
           modality: str | None = None) -> bytes:
    """The PNG of one modality (default: the first image, else the first), for
    every sample or just ``sample``."""
    mm = batch.modalities[modality or default_modality(data)]
    rows = list(range(len(batch.indices_a))) if sample is None else [sample]
    captions = [_caption(data, batch, i, mm) for i in rows]
    regions = [mm.region_at(i) for i in rows] if mm.region is not None else None
    if mm.kind == "video":
        return render_video_strips(mm.a[rows], mm.b[rows], mm.mixed[rows], captions, regions)
    if mm.kind in IMAGE_KINDS:
        return render_mix_grid(mm.a[rows], mm.b[rows], mm.mixed[rows], captions, regions)
    if mm.kind == "audio":
        return render_spectrograms(mm.a[rows], mm.b[rows], mm.mixed[rows], captions, regions,
                                   _SPEC_LAYOUT.get(mm.op or ""), waveform=mm.waveform)
    if mm.kind == "text":
        vocab = _vocab(data, mm.name)
        text_rows = []
        for caption, i in zip(captions, rows, strict=True):
            if mm.deferred:
                width = int(max((mm.a[i] != 0).sum(), (mm.b[i] != 0).sum(), 1))
                text_rows.append(TextRow(
                    caption, tokens_a=_words(vocab, mm.a[i], MAX_PNG_TOKENS),
                    tokens_b=_words(vocab, mm.b[i], MAX_PNG_TOKENS), lam=batch.lam[i],
                    mask=mm.mask[i, :min(width, MAX_PNG_TOKENS)].tolist()
                    if mm.mask is not None else None))
            else:
                sources = mm.token_sources(i)
                text_rows.append(TextRow(
                    caption, tokens=[(_word(vocab, t), s) for _, t, s in
                                     sources[:MAX_PNG_TOKENS]],
                    truncated=len(sources) > MAX_PNG_TOKENS))
        return render_tokens(text_rows)
    # tabular, and anything else flat
    a, b, mixed = (x[rows].reshape(len(rows), -1).float() for x in (mm.a, mm.b, mm.mixed))
    shown = min(a.shape[1], MAX_FEATURES)
    return render_table(_features(data, mm.name, a.shape[1])[:shown], a[:, :shown],
                        b[:, :shown], mixed[:, :shown], captions)
