"""What access control adds to the application: the 429 of a project's run
limits, and the start-up warning when authentication is off."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.services.errors import LimitExceeded
from app.settings import Settings

log = logging.getLogger("mixlab.access")

AUTH_OFF_WARNING = ("authentication is OFF: every request acts as project 'default' with "
                    "write scope; anyone who can reach this port can read and change "
                    "everything (set MIXLAB_AUTH=true to require API keys)")


def install(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(LimitExceeded)
    async def _limit(_: Request, exc: LimitExceeded) -> JSONResponse:
        return JSONResponse(status_code=429, content={"detail": str(exc)},
                            headers={"Retry-After": str(exc.retry_after_s)})

    if not settings.auth_enabled:
        log.warning(AUTH_OFF_WARNING)
