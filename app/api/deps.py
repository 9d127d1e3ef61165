from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.async_reads import HotReads
from app.db.session import get_sessionmaker
from app.services import auth
from app.services.auth import Principal
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, get_store

T = TypeVar("T")


# Hot reads hold a pooled connection for their whole thread: more of them at once
# than the pool has connections (10) would open and close overflow connections
# per request, and more threads only fight over the GIL; the rest wait on the loop.
DB_READ_THREADS = 10
_db_reads: RunVar[anyio.CapacityLimiter] = RunVar("mixlab_db_reads")  # one per event loop


async def db_read(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` (blocking, database) in a worker thread, at most
    ``DB_READ_THREADS`` at once."""
    try:
        limiter = _db_reads.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(DB_READ_THREADS)
        _db_reads.set(limiter)
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


# async where nothing blocks: FastAPI runs a plain ``def`` dependency in the
# threadpool, a hop that costs a hot read more than the work itself
async def base_url(request: Request) -> str:
    """Absolute URL prefix for links in replies (MIXLAB_PUBLIC_URL wins)."""
    configured = get_settings().public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


async def hot_reads(request: Request) -> HotReads | None:
    """The lifespan's asyncio Postgres pool (``app.db.async_reads``), if any."""
    return getattr(request.app.state, "hot_reads", None)


SessionDep = Annotated[Session, Depends(get_session)]
HotReadsDep = Annotated[HotReads | None, Depends(hot_reads)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
async def current_settings() -> Settings:
    """The settings, as a dependency (tests override this one)."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]
BaseUrlDep = Annotated[str, Depends(base_url)]

# auto_error=False: a missing key is answered below, in the API's own error shape
# and with the WWW-Authenticate header RFC 6750 asks for; declaring the scheme here
# puts it in the OpenAPI schema (Swagger's Authorize button, schemathesis).
bearer = HTTPBearer(
    auto_error=False, scheme_name="apiKey", bearerFormat="mxl_<prefix>_<secret>",
    description="An API key of the project: `Authorization: Bearer mxl_…` (`mixlab admin "
                "create-key`, or POST /v1/keys with a write key). Read keys may call GET "
                "routes and previews; write keys every route.")


def _unauthorized(message: str, challenge: str = "Bearer") -> HTTPException:
    return HTTPException(status_code=401, detail=message,
                         headers={"WWW-Authenticate": challenge})


def _lookup(key: str) -> Principal | None:
    session = get_sessionmaker()()
    try:
        return auth.authenticate(session, key)
    finally:
        session.close()


async def authenticate(settings: SettingsDep,
                       credentials: Annotated[HTTPAuthorizationCredentials | None,
                                              Depends(bearer)],
                       ) -> Principal:
    """The project and scope of the request's API key (every /v1 route depends on
    it). With authentication off, every request is the default project's, writing.
    A key verified in the last second (``auth.KEY_CACHE_S``) is answered from
    memory, on the event loop; otherwise its row is read in the threadpool."""
    if not settings.auth_enabled:
        return auth.DEFAULT_PRINCIPAL
    if credentials is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>` (mixlab "
                            "admin create-key makes one)")
    principal = auth.cached(credentials.credentials)
    if principal is None:
        principal = await db_read(_lookup, credentials.credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked API key",
                            'Bearer error="invalid_token", error_description="invalid or '
                            'revoked API key"')
    return principal


async def require_write(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.can_write:
        raise HTTPException(status_code=403, detail="this API key is read-only; the route "
                                                    "needs a key with scope write")
    return principal


ReaderDep = Annotated[Principal, Depends(authenticate)]
WriterDep = Annotated[Principal, Depends(require_write)]

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
# the documented reply of a write route to a read-only key
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "The API key is read-only (scope read)", "content": _ERROR}}
