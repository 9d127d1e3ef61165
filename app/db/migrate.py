"""Run Alembic migrations from code (``mixlab migrate``, ``mixlab up``, tests)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent


class UnknownRevision(ValueError):
    """A revision this code has no migration for (or that matches several)."""


@dataclass(frozen=True)
class Migrated:
    """What :func:`migrate_to` did: ``before`` and ``after`` are revision ids,
    None for an empty database (Alembic's ``base``)."""

    before: str | None
    after: str | None
    direction: Literal["upgraded", "downgraded", "unchanged"]
    head: str


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def revisions() -> list[str]:
    """Every revision id, oldest first (the history is linear)."""
    script = ScriptDirectory.from_config(alembic_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def current_revision(database_url: str | None = None) -> str | None:
    """The database's revision; None when it has none (empty, or never migrated)."""
    from app.db.session import make_engine
    from app.settings import get_settings

    engine = make_engine(database_url or get_settings().resolved_database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def resolve(revision: str) -> str | None:
    """``head``, ``base`` or a revision id (or a unique start of one) → the id,
    None for ``base``; UnknownRevision for anything else."""
    known = revisions()
    script = ScriptDirectory.from_config(alembic_config())
    if revision == "base":
        return None
    try:
        found = script.get_revision(revision)
    except CommandError as exc:
        why = "" if "Can't locate" in str(exc) else f" ({exc})"
        raise UnknownRevision(f"unknown revision {revision!r}{why}; known: "
                              f"{', '.join(known)} (head), base") from None
    if found is None or found.revision not in known:
        raise UnknownRevision(f"unknown revision {revision!r}; known: {', '.join(known)} "
                              "(head), base")
    return found.revision


def migrate_to(revision: str = "head", database_url: str | None = None) -> Migrated:
    """Bring the database to ``revision``: Alembic's upgrade when it is newer than
    the database's, downgrade when it is older (what the dropped tables and columns
    held is lost), nothing when the database is there already."""
    known = revisions()
    target = resolve(revision)
    before = current_revision(database_url)
    if before is not None and before not in known:
        raise UnknownRevision(f"the database is at revision {before!r}, which this version "
                              f"of mixlab does not know (known: {', '.join(known)}); was it "
                              "migrated by a newer mixlab?")
    position = {rev: i for i, rev in enumerate(known)}

    def index(rev: str | None) -> int:
        return -1 if rev is None else position[rev]

    if index(target) > index(before):
        upgrade(database_url, target or "base")
        direction: Literal["upgraded", "downgraded", "unchanged"] = "upgraded"
    elif index(target) < index(before):
        downgrade(database_url, target or "base")
        direction = "downgraded"
    else:
        direction = "unchanged"
    return Migrated(before=before, after=target, direction=direction, head=known[-1])
