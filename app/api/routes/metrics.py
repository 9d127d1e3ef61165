from fastapi import APIRouter
from fastapi.responses import Response

from app.observability import metrics

router = APIRouter(tags=["health"])


# open like /healthz: nothing in it names or identifies a project's objects
@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
