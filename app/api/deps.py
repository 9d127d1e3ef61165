from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db.session import get_sessionmaker
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, get_store


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


def base_url(request: Request) -> str:
    """Absolute URL prefix for links in replies (MIXLAB_PUBLIC_URL wins)."""
    configured = get_settings().public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BaseUrlDep = Annotated[str, Depends(base_url)]
