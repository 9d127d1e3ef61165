"""What an autoencoder run learned: embeddings, reconstructions, cross-modal
generation (``app.services.representations``)."""

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.api.deps import ReaderDep, SessionDep, StoreDep
from app.schemas.representations import EmbeddingsOut, SplitName
from app.services import representations as service

router = APIRouter(prefix="/runs", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown run"},
    409: {"description": "The run has not succeeded (yet)"},
    422: {"description": "The run's model has no latent (it is not a multimodal_ae or "
                         "multimodal_vae run; `loc` is `[\"path\", \"run_id\"]`), or a bad "
                         "query value"}}
_PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}, **_ERRORS}
Limit = Annotated[int, Query(ge=1, le=service.MAX_EMBEDDINGS,
                             description="At most this many rows, the split's first")]
Pictures = Annotated[int, Query(ge=1, le=service.MAX_PICTURES,
                                description="Samples (rows of the picture), the split's first")]


@router.get("/{run_id}/embeddings", response_model=EmbeddingsOut,
            summary="Latent means of a split's rows with labels and a 2-D PCA projection "
                    "(JSON; ?format=png: the projection as a scatter coloured by class)",
            responses=_PNG)
async def embeddings(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                     principal: ReaderDep, split: SplitName = "test",
                     limit: Limit = 2000, format: Literal["json", "png"] = "json") -> Any:
    if format == "png":
        return await embeddings_png(run_id, session, store, principal, split, limit)
    return await run_in_threadpool(service.embeddings, session, store, principal.project_id,
                                   run_id, split, limit)


@router.get("/{run_id}/embeddings.png", response_class=Response,
            summary="The PCA projection of a split's latent means, coloured by class (PNG)",
            responses=_PNG)
async def embeddings_png(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                         principal: ReaderDep, split: SplitName = "test",
                         limit: Limit = 2000) -> Response:
    png = await run_in_threadpool(service.embeddings_png, session, store, principal.project_id,
                                  run_id, split, limit)
    return Response(png, media_type="image/png")


@router.get("/{run_id}/reconstructions", response_class=Response,
            summary="Input | reconstruction per modality, one row per sample (PNG)",
            responses=_PNG)
async def reconstructions(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                          principal: ReaderDep, split: SplitName = "test",
                          n: Pictures = 8) -> Response:
    png = await run_in_threadpool(service.reconstructions_png, session, store,
                                  principal.project_id, run_id, split, n)
    return Response(png, media_type="image/png")


@router.get("/{run_id}/generate", response_class=Response,
            summary="Cross-modal generation: modality `to` decoded from modality `from` "
                    "alone, beside the given and the actual one, per sample (PNG)",
            responses=_PNG)
async def generate(run_id: uuid.UUID, session: SessionDep, store: StoreDep,
                   principal: ReaderDep, split: SplitName = "test", n: Pictures = 8,
                   source: Annotated[str | None, Query(
                       alias="from", max_length=64,
                       description="The modality given (default: the model's first)")] = None,
                   target: Annotated[str | None, Query(
                       alias="to", max_length=64,
                       description="The modality generated (default: its last)")] = None,
                   ) -> Response:
    png = await run_in_threadpool(service.generate_png, session, store, principal.project_id,
                                  run_id, split, n, source, target)
    return Response(png, media_type="image/png")
