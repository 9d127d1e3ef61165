"""Map service errors to HTTP replies with one consistent shape.

Body problems use FastAPI's 422 shape (``detail`` is a list of ``loc``/``msg``/
``type``); everything else is ``{"detail": "<message>"}``.
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from app.ml.data import DataValidationError
from app.services.errors import ConflictError, FieldError, NotFoundError


def field_error_body(loc: tuple[str | int, ...], message: str) -> dict[str, object]:
    return {"detail": [{"loc": list(loc), "msg": message, "type": "value_error"}]}


def install(app: FastAPI) -> None:
    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(FieldError)
    async def _field(_: Request, exc: FieldError) -> JSONResponse:
        return JSONResponse(status_code=422, content=field_error_body(exc.loc, exc.message))

    @app.exception_handler(DataValidationError)
    async def _data(_: Request, exc: DataValidationError) -> JSONResponse:
        if exc.field.startswith("source."):  # a built-in's options
            loc: tuple[str, ...] = ("body", *exc.field.split("."))
        else:  # an uploaded file's arrays / columns
            loc = ("body", "file", exc.field) if exc.field != "file" else ("body", "file")
        return JSONResponse(status_code=422, content=field_error_body(loc, str(exc)))

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": "database unavailable"},
                            headers={"Retry-After": "5"})
