"""``mixlab admin``: projects and API keys, straight in the database.

These bootstrap access (the first key of a project cannot come from the API,
which wants a key); afterwards a write key manages its project's keys through
``/v1/keys``. They act on the configured database (``MIXLAB_DATABASE_URL``, or
the embedded SQLite file under ``--data-dir``), migrated (``mixlab migrate``).

Exit codes: 0 ok; 1 refused (a name taken, an unknown project or key, a bad
limit); 2 the database cannot be used, or the options do not fit (a key id
prefix that matches several keys among them).
"""

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.cli_client import App, make_console

# piped output gets wide tables, so ids are never folded
out = make_console()
err = make_console(stderr=True)

admin_app = App(help="Projects and API keys, in the database itself (bootstraps the first key "
                     "of a project).\n\nThese act on the configured database "
                     "(MIXLAB_DATABASE_URL, or the embedded SQLite file under --data-dir), "
                     "migrated (mixlab migrate).", no_args_is_help=True)

LimitOption = Annotated[list[str] | None, typer.Option(
    "--limit", metavar="NAME=VALUE",
    help="A per-project limit (repeatable): running_runs, queued_runs, dataset_bytes, "
         "epoch_samples, model_parameters. VALUE 'default' drops an override.")]


@admin_app.callback()
def admin(data_dir: Annotated[Path | None, typer.Option(
        help="Embedded state folder (when MIXLAB_DATABASE_URL is unset).")] = None) -> None:
    if data_dir is not None:
        os.environ["MIXLAB_DATA_DIR"] = str(data_dir)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error: {escape(message)}[/]", soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _session() -> Iterator[Session]:
    """A session whose failures end the command with a message, never a traceback."""
    from app.db.session import session_scope
    from app.services.errors import ConflictError, NotFoundError

    try:
        with session_scope() as session:
            yield session
    except (ConflictError, NotFoundError) as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise _fail(f"--limit {problems}") from None
    except SQLAlchemyError as exc:
        raise _fail(f"cannot use the database ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0]}); is it up and migrated? (mixlab migrate)",
                    code=2) from None


def _limits(pairs: list[str]) -> dict[str, int | None]:
    limits: dict[str, int | None] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise _fail(f"--limit {pair!r}: expected NAME=VALUE")
        if raw == "default":
            limits[name] = None
            continue
        try:
            limits[name] = int(raw.replace("_", ""))
        except ValueError:
            raise _fail(f"--limit {pair!r}: VALUE must be a whole number or 'default'") from None
    return limits


@admin_app.command("create-project")
def create_project(name: Annotated[str, typer.Argument(help="Unique, up to 100 characters.")],
                   limit: LimitOption = None) -> None:
    """Create a project (datasets, experiments and runs belong to one)."""
    from app.services import auth

    if not 1 <= len(name) <= 100:
        raise _fail("NAME must have 1 to 100 characters", code=2)
    with _session() as session:
        project = auth.create_project(session, name, _limits(limit or []))
        out.print(f"created project {escape(project.name)} ({project.id})")


@admin_app.command("set-limits")
def set_limits(name: Annotated[str, typer.Argument(help="The project.")],
               limit: LimitOption = None) -> None:
    """Override limits of a project (the others follow the MIXLAB_LIMIT_* defaults)."""
    from app.services import auth

    with _session() as session:
        project = auth.set_limits(session, name, _limits(limit or []))
        out.print(f"project {escape(project.name)} limits: {project.limits or 'defaults'}")


@admin_app.command("list-projects")
def list_projects() -> None:
    """Every project, with the limits it overrides."""
    from app.services import auth

    with _session() as session:
        table = Table(title="projects")
        for column in ("id", "name", "limits", "created"):
            table.add_column(column, no_wrap=column == "id")
        for p in auth.list_projects(session):
            table.add_row(str(p.id), escape(p.name), escape(str(p.limits or "defaults")),
                          _when(p.created_at))
    out.print(table)


@admin_app.command("create-key")
def create_key(project: Annotated[str, typer.Option(help="The project's name.")],
               scope: Annotated[str, typer.Option(
                   help="read (GET routes and previews) or write (everything).")] = "write",
               name: Annotated[str, typer.Option(help="What the key is for.")] = "key",
               ) -> None:
    """Create an API key; it is printed once, alone on stdout, and never stored."""
    from app.db.models import KEY_SCOPES
    from app.services import auth

    if scope not in KEY_SCOPES:
        raise _fail(f"--scope must be one of {', '.join(KEY_SCOPES)}", code=2)
    if not 1 <= len(name) <= 100:
        raise _fail("--name must have 1 to 100 characters", code=2)
    with _session() as session:
        found = auth.find_project(session, project)
        row, key = auth.create_key(session, found.id, name, scope)
        err.print(f"API key {row.id} of project {escape(found.name)} (scope {scope}); it is "
                  "shown only now: keep it (e.g. export MIXLAB_API_KEY=...)", soft_wrap=True)
    print(key)


@admin_app.command("list-keys")
def list_keys(project: Annotated[str | None, typer.Option(
        help="Only this project's keys.")] = None) -> None:
    """API keys (prefixes, never the keys), revoked ones included."""
    from app.db.models import Project
    from app.services import auth

    with _session() as session:
        project_id = auth.find_project(session, project).id if project else None
        names = {p.id: p.name for p in session.query(Project)}
        table = Table(title="API keys")
        for column in ("id", "project", "name", "prefix", "scope", "created", "last used",
                       "revoked"):
            table.add_column(column, no_wrap=column in ("id", "prefix"))
        for k in auth.list_keys(session, project_id):
            table.add_row(str(k.id), escape(names[k.project_id]), escape(k.name), k.prefix,
                          k.scope, _when(k.created_at), _when(k.last_used_at),
                          _when(k.revoked_at))
    out.print(table)


def _when(stamp: datetime | None) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M:%S") if stamp is not None else "-"


def _find_key(session: Session, text: str) -> uuid.UUID:
    """A key's id from its id, a unique start of it, or its prefix (mxl_…)."""
    from app.cli_client import match_id
    from app.db.models import Project
    from app.services import auth

    typed = text.strip().lower()
    try:
        return uuid.UUID(typed)
    except ValueError:
        pass
    names = {p.id: p.name for p in session.query(Project)}
    keys = [{"id": str(k.id), "prefix": k.prefix, "name": k.name,
             "project": names.get(k.project_id, "?"), "revoked": k.revoked_at is not None}
            for k in auth.list_keys(session)]
    by_prefix = typed.startswith("mxl_")
    if not by_prefix and (not re.fullmatch(r"[0-9a-f-]+", typed)
                          or not typed.replace("-", "")):
        raise _fail(f"{text!r} is not a key id (hexadecimal, e.g. the first 8 characters) "
                    "nor a key prefix (mxl_…)", code=2)
    return uuid.UUID(match_id(
        typed, keys, "key",
        lambda k: f"{k['prefix']}… {k['name']} of project {k['project']}"
                  + (" (revoked)" if k["revoked"] else ""), "mixlab admin list-keys",
        field="prefix" if by_prefix else "id"))


@admin_app.command("revoke-key")
def revoke_key(key: Annotated[str, typer.Argument(
        metavar="KEY", show_default=False,
        help="The key's id, a unique start of it, or the key's prefix (mxl_…), as mixlab "
             "admin list-keys shows them.")]) -> None:
    """Revoke an API key: its next request is refused (401)."""
    from app.services import auth

    with _session() as session:
        found = auth.revoke_key(session, _find_key(session, key))
        out.print(f"revoked key {found.id} ({found.prefix}…)")
