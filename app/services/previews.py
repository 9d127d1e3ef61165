"""Previews of mixed samples: JSON description and PNG rendering."""

import uuid
from urllib.parse import urlencode

from app.ml.data import PreparedDataset
from app.ml.preview import PreviewBatch, preview_mix
from app.ml.render import render_mix_grid
from app.schemas.datasets import PreviewOut, PreviewRequest, PreviewSample
from app.services.errors import FieldError


def compute(data: PreparedDataset, request: PreviewRequest) -> PreviewBatch:
    if "image" not in data.inputs:
        raise FieldError(("body", "method"), "this dataset has no image modality to preview")
    if request.method == "cutmix" and data.inputs["image"].dim() != 4:
        raise FieldError(("body", "method"), "cutmix needs images shaped (C, H, W)")
    mix_spec = request.to_mix_spec()
    return preview_mix(data, mix_spec, request.seed, request.n, request.split)


def png_query(request: PreviewRequest, sample: int | None = None) -> str:
    """The preview spec as query parameters, so the PNG URL is self-describing."""
    params = request.model_dump(exclude_defaults=True)
    params.update(method=request.method, seed=request.seed, n=request.n)
    if request.cutmix_minmax is not None:
        params["cutmix_minmax"] = f"{request.cutmix_minmax[0]},{request.cutmix_minmax[1]}"
    if sample is not None:
        params["sample"] = sample
    return urlencode(params)


def describe(dataset_id: uuid.UUID, data: PreparedDataset, request: PreviewRequest,
             batch: PreviewBatch, base_url: str) -> PreviewOut:
    names = data.class_names
    samples = []
    for i, (a, b) in enumerate(zip(batch.indices_a, batch.indices_b, strict=True)):
        row = batch.targets[i]
        mixture = {names[k]: round(float(row[k]), 6) for k in row.nonzero().flatten().tolist()}
        samples.append(PreviewSample(
            index_a=a, index_b=b, lam=batch.lam[i],
            label_a=names[int(data.labels[a])], label_b=names[int(data.labels[b])],
            label_mixture=mixture,
            box=batch.boxes[i] if batch.boxes is not None else None,
            image_url=f"{base_url}/v1/datasets/{dataset_id}/preview.png?"
                      f"{png_query(request, sample=i)}"))
    return PreviewOut(dataset_id=dataset_id, spec=request, samples=samples,
                      image_url=f"{base_url}/v1/datasets/{dataset_id}/preview.png?"
                                f"{png_query(request)}")


def render(data: PreparedDataset, batch: PreviewBatch, sample: int | None = None) -> bytes:
    rows = range(len(batch.indices_a)) if sample is None else [sample]
    names = data.class_names
    captions = []
    for i in rows:
        top = batch.targets[i].topk(min(2, batch.targets.shape[1]))
        mixture = ", ".join(f"{names[k]}: {w:.2f}" for w, k in
                            zip(top.values.tolist(), top.indices.tolist(), strict=True) if w > 0)
        captions.append(f"#{batch.indices_a[i]} + #{batch.indices_b[i]}\n"
                        f"lambda = {batch.lam[i]:.3f}\n{mixture}")
    pick = list(rows)
    return render_mix_grid(batch.images_a[pick], batch.images_b[pick], batch.mixed[pick],
                           captions, [batch.boxes[i] for i in pick] if batch.boxes else None)
