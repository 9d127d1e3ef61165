"""Projects and their API keys: create, authenticate, list, revoke.

A key reads ``mxl_<8 hex>_<secret>``; its first 12 characters (``mxl_<8 hex>``)
are its *prefix*, stored in clear to find the row and to show in listings. The
key itself is shown once, at creation; only its SHA-256 is stored.

A verified key is remembered for ``KEY_CACHE_S`` (1 s) by its SHA-256, so a busy
client's requests do not each read its row. Revoking through this process
forgets the key at once; another API process (``--workers``, another host) may
accept a revoked key for at most ``KEY_CACHE_S`` more.
"""

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import DEFAULT_PROJECT_ID, KEY_SCOPES, ApiKey, Project
from app.schemas.access import ProjectLimits
from app.services.errors import ConflictError, NotFoundError

KEY_TAG = "mxl"
PREFIX_HEX = 8
PREFIX_LENGTH = len(KEY_TAG) + 1 + PREFIX_HEX
MAX_KEY_LENGTH = 200  # a real key is 56 characters; anything far longer is not one
# last_used_at is written at most this often per key, so requests do not each write
LAST_USED_RESOLUTION = timedelta(minutes=1)
# how long a verified key is trusted without reading its row: the bound on how
# late another process notices a revocation
KEY_CACHE_S = 1.0
KEY_CACHE_MAX = 10_000  # keys remembered at once; past it the cache starts afresh


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a project, with the scope of the key it showed."""

    project_id: uuid.UUID
    scope: str
    key_id: uuid.UUID | None = None

    @property
    def can_write(self) -> bool:
        return self.scope == "write"


DEFAULT_PRINCIPAL = Principal(DEFAULT_PROJECT_ID, "write")


def generate_key() -> str:
    # 32 random bytes (256 bits) in the secret; the prefix only locates the row
    return f"{KEY_TAG}_{secrets.token_hex(PREFIX_HEX // 2)}_{secrets.token_urlsafe(32)}"


def key_prefix(key: str) -> str | None:
    """The stored prefix of a well-formed key; None for anything else."""
    tag, _, rest = key.partition("_")
    prefix_hex, _, secret = rest.partition("_")
    if (tag != KEY_TAG or len(prefix_hex) != PREFIX_HEX or not secret
            or len(key) > MAX_KEY_LENGTH
            or any(c not in "0123456789abcdef" for c in prefix_hex)):
        return None
    return key[:PREFIX_LENGTH]


def hash_key(key: str) -> str:
    # A fast hash is right here, unlike for passwords: the secret is 256 random
    # bits from `secrets`, so there is nothing to guess even with a stolen table,
    # and a slow KDF (bcrypt, argon2) would cost every request tens of ms.
    return hashlib.sha256(key.encode()).hexdigest()


# --- projects ------------------------------------------------------------------------

def create_project(session: Session, name: str,
                   limits: dict[str, Any] | None = None) -> Project:
    overrides = ProjectLimits.model_validate(limits or {}).model_dump(exclude_none=True)
    project = Project(name=name, limits=overrides)
    session.add(project)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError(f"a project named {name!r} exists") from None
    return project


def find_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFoundError("project", repr(name))
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.created_at, Project.name)))


def set_limits(session: Session, name: str, limits: dict[str, Any]) -> Project:
    """Merge ``limits`` into the project's overrides; a value of None drops one."""
    project = find_project(session, name)
    merged = {**(project.limits or {}), **limits}
    project.limits = ProjectLimits.model_validate(merged).model_dump(exclude_none=True)
    session.commit()
    return project


# --- keys ------------------------------------------------------------------------------

def create_key(session: Session, project_id: uuid.UUID, name: str,
               scope: str) -> tuple[ApiKey, str]:
    """A new key of the project: the row, and the key itself (never stored)."""
    if scope not in KEY_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(KEY_SCOPES)}, not {scope!r}")
    if session.get(Project, project_id) is None:
        raise NotFoundError("project", project_id)
    key = generate_key()
    row = ApiKey(project_id=project_id, name=name, scope=scope, prefix=key[:PREFIX_LENGTH],
                 key_hash=hash_key(key))
    session.add(row)
    session.commit()
    return row, key


# SHA-256 of a verified key → (monotonic expiry, its principal). Only keys that
# verified are kept, so unknown keys cannot fill it; a plain dict, whose single
# get/set/pop are atomic under the GIL, so the threadpool needs no lock.
_verified: dict[str, tuple[float, Principal]] = {}


def cached(key: str) -> Principal | None:
    """The principal of a key verified less than ``KEY_CACHE_S`` ago, else None
    (then ``authenticate`` reads the row)."""
    hit = _verified.get(hash_key(key))
    if hit is None or hit[0] <= time.monotonic():
        return None
    return hit[1]


def forget(key_id: uuid.UUID | None = None) -> None:
    """Drop a key (every key with None) from the cache of verified keys."""
    if key_id is None:
        _verified.clear()
        return
    for digest, (_, principal) in list(_verified.items()):
        if principal.key_id == key_id:
            _verified.pop(digest, None)


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal a key stands for; None for an unknown, malformed or revoked key.
    Reads the key's row unless it verified less than ``KEY_CACHE_S`` ago."""
    prefix = key_prefix(key)
    if prefix is None:
        return None
    digest = hash_key(key)
    hit = _verified.get(digest)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    found = None
    for row in session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)):
        if hmac.compare_digest(row.key_hash, digest):
            found = row
    if found is None or found.revoked_at is not None:
        return None
    _touch(session, found)
    principal = Principal(found.project_id, found.scope, found.id)
    if len(_verified) >= KEY_CACHE_MAX:
        _verified.clear()
    _verified[digest] = (time.monotonic() + KEY_CACHE_S, principal)
    return principal


def _touch(session: Session, key: ApiKey) -> None:
    now = utcnow()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    # guarded: of several requests racing past the check above, one writes
    session.execute(update(ApiKey).where(
        ApiKey.id == key.id, or_(ApiKey.last_used_at.is_(None),
                                 ApiKey.last_used_at < now - LAST_USED_RESOLUTION))
        .values(last_used_at=now))
    session.commit()


def list_keys(session: Session, project_id: uuid.UUID | None = None) -> list[ApiKey]:
    """The project's keys (every project's with None), revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: uuid.UUID,
               project_id: uuid.UUID | None = None) -> ApiKey:
    """Revoke a key of the project (any project's with None); revoking twice is a no-op."""
    key = session.get(ApiKey, key_id)
    if key is None or (project_id is not None and key.project_id != project_id):
        raise NotFoundError("key", key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    forget(key.id)  # this process refuses it from the next request on
    return key
