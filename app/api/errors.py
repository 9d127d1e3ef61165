"""Map service errors to HTTP replies with one consistent shape.

Body problems use FastAPI's 422 shape (``detail`` is a list of ``loc``/``msg``/
``type``); everything else is ``{"detail": "<message>"}``.
"""

import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.ml.data import DataValidationError
from app.ml.data.errors import plain
from app.services.errors import ConflictError, FieldError, Loc, NotFoundError


def field_error_body(*problems: tuple[Loc, str]) -> dict[str, object]:
    """FastAPI's 422 body: one ``detail`` entry per (loc, message)."""
    return {"detail": [{"loc": list(loc), "msg": plain(message), "type": "value_error"}
                       for loc, message in problems]}


def json_safe(value: object) -> object:
    """``value`` with every non-finite float spelled as a string. Python's JSON parser
    reads ``Infinity`` and ``NaN``, and a 422 echoes the input, which strict JSON
    cannot carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own 405 names only
    the first route whose path matched (GET and POST on one path are two routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    # HEAD is implied by GET and not part of the documented contract
    return sorted(methods - {"HEAD"})


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
            return JSONResponse(status_code=405, content={"detail": exc.detail},
                                headers=headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = json_safe(jsonable_encoder(exc.errors()))
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": plain(exc)})

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": plain(exc)})

    @app.exception_handler(FieldError)
    async def _field(_: Request, exc: FieldError) -> JSONResponse:
        return JSONResponse(status_code=422, content=field_error_body(*exc.problems))

    @app.exception_handler(DataValidationError)
    async def _data(_: Request, exc: DataValidationError) -> JSONResponse:
        if exc.field.startswith("source."):  # a built-in's options
            loc: tuple[str, ...] = ("body", *exc.field.split("."))
        else:  # an uploaded file's arrays / columns
            loc = ("body", "file", exc.field) if exc.field != "file" else ("body", "file")
        return JSONResponse(status_code=422, content=field_error_body((loc, str(exc))))

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": "database unavailable"},
                            headers={"Retry-After": "5"})
