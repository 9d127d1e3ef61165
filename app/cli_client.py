"""The ``mixlab`` commands that talk to a running API: datasets, preview,
experiments and runs. Each takes ``--url`` (env ``MIXLAB_URL``) and ``--api-key``
(env ``MIXLAB_API_KEY``), and most take ``--json`` for the raw reply instead of
a table. Wherever an id is typed, a unique start of it will do (the tables print
the first 8 characters): it is resolved through the list endpoints.

Exit codes: 0 ok; 1 the API refused (``error: <status> <detail>``), an id
matches nothing, a watched run did not succeed, or a dataset failed to prepare;
2 the API could not be reached, or the options do not fit (an ambiguous id
prefix among them); 130 interrupted.
"""

import inspect
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from app.client import TERMINAL, MixlabClient, MixlabError

DEFAULT_URL = "http://127.0.0.1:8000"
POLL_S = 0.5
# the width of tables when stdout is not a terminal and COLUMNS is unset (rich's
# default there is 80, which folds tables into an unreadable grid)
PIPED_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    """A console as wide as COLUMNS, else the terminal; when the stream is not a
    terminal and COLUMNS is unset, PIPED_WIDTH, so ids and tables are not folded."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if wide else None)


out = make_console(stderr=False)
err = make_console(stderr=True)


# ── help texts ────────────────────────────────────────────────────────────────

def plain_help(text: str | None) -> str | None:
    """A docstring as help: each paragraph (blank-line separated) on one line, so
    the terminal wraps it, never the source's line breaks."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split())
                       for p in paragraphs)


def _untyped_flags(params: list[Any]) -> list[Any]:
    """Flags (``--json``, ``--wait/--no-wait``, ``--help``) take no value: show no
    type for them (typer would print ``<bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class HelpCommand(TyperCommand):
    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=plain_help(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class HelpGroup(TyperGroup):
    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=plain_help(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))


class App(typer.Typer):
    """typer.Typer whose commands and groups show plain help (see HelpCommand)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", HelpGroup)
        kwargs.setdefault("rich_markup_mode", "rich")
        super().__init__(**kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("cls", HelpCommand)
        return super().command(name, **kwargs)


Url = Annotated[str, typer.Option("--url", envvar="MIXLAB_URL", show_envvar=True,
                                  help="Base URL of the mixlab API.")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="MIXLAB_API_KEY", show_envvar=True, show_default=False,
    help="API key of the project (sent as Authorization: Bearer); not needed when the "
         "server runs with authentication off.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON reply.")]
Limit = Annotated[int, typer.Option(min=1, max=500, help="Page size.")]
Offset = Annotated[int, typer.Option(min=0, help="Items to skip.")]
RunArg = Annotated[str, typer.Argument(
    metavar="RUN", show_default=False,
    help="A run's id, or a unique start of it (e.g. the 8 characters tables print).")]
ExperimentArg = Annotated[str, typer.Argument(
    metavar="EXPERIMENT", show_default=False,
    help="An experiment's id, or a unique start of it.")]
DatasetArg = Annotated[str, typer.Argument(
    metavar="DATASET", show_default=False, help="A dataset's id, or a unique start of it.")]

datasets_app = App(help="Register, list, describe and delete datasets.", no_args_is_help=True)
experiments_app = App(help="Submit, list, inspect and delete experiments.",
                      no_args_is_help=True)
runs_app = App(help="List, follow, cancel and read runs: metrics, evaluation, checkpoint.",
               no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add the client commands to the top-level ``mixlab`` app."""
    cli.add_typer(datasets_app, name="datasets")
    cli.command("preview")(preview)
    cli.add_typer(experiments_app, name="experiments")
    cli.add_typer(runs_app, name="runs")
    cli.command("predict")(predict)
    from app import cli_sweeps  # imports this module: registered last, not at import

    cli_sweeps.register(cli)


# ── plumbing ──────────────────────────────────────────────────────────────────

def format_error(exc: MixlabError) -> list[str]:
    """``error: <status> <detail>``; a 422 lists each ``loc: msg`` below it."""
    detail = exc.detail
    if isinstance(detail, list):
        lines = [f"error: {exc.status_code} invalid request"]
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                lines.append(f"  {loc}: {item.get('msg', item)}")
            else:
                lines.append(f"  {item}")
        return lines
    return [f"error: {exc.status_code} {detail if detail is not None else ''}".rstrip()]


@contextmanager
def connect(url: str, api_key: str | None = None) -> Iterator[MixlabClient]:
    """A client whose failures end the command cleanly: API errors exit 1,
    an unreachable API exits 2, Ctrl-C exits 130 — never a traceback."""
    try:
        with MixlabClient(url, api_key=api_key) as mx:
            yield mx
    except MixlabError as exc:
        for line in format_error(exc):
            err.print(f"[red]{escape(line)}[/]", soft_wrap=True)
        if exc.status_code == 401:
            err.print("  give the project's API key with --api-key or MIXLAB_API_KEY "
                      "(mixlab admin create-key makes one)", soft_wrap=True)
        raise typer.Exit(1) from None
    except httpx.ConnectError as exc:
        err.print(f"[red]error: cannot connect to {escape(url)} ({escape(str(exc))})[/] — "
                  "is the API running? mixlab up", soft_wrap=True)
        raise typer.Exit(2) from None
    except httpx.TransportError as exc:
        err.print(f"[red]error: {escape(url)}: {escape(type(exc).__name__)} "
                  f"{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error: {escape(message)}[/]", soft_wrap=True)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data))


def when(stamp: str | None) -> str:
    """ISO timestamp → ``YYYY-MM-DD HH:MM:SS`` (UTC as the API gives it)."""
    return stamp.replace("T", " ")[:19] if stamp else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(*columns: str, title: str | None = None) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, no_wrap=col in ("id", "run", "experiment", "dataset"))
    return t


def kv_table(rows: dict[str, Any], title: str | None = None) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in rows.items():
        t.add_row(key, escape(str(value)))
    return t


def column_width(header: str, cells: Iterable[str]) -> int:
    """Characters a table column takes: its widest cell, padding and a border."""
    return max([len(header), *(len(c) for c in cells)]) + 3


def fitted_tables(title: str, fixed: list[tuple[str, list[str]]],
                  columns: list[tuple[str, list[str]]], width: int) -> list[Table]:
    """One table of the ``fixed`` columns (row labels, repeated) and ``columns``;
    several when they do not fit in ``width`` characters, each with as many of
    ``columns`` as fit, so that no header or cell is ever cut."""
    room = width - 1 - sum(column_width(h, c) for h, c in fixed)
    chunks: list[list[tuple[str, list[str]]]] = [[]]
    used = 0
    for header, cells in columns:
        need = column_width(header, cells)
        if chunks[-1] and used + need > room:
            chunks.append([])
            used = 0
        chunks[-1].append((header, cells))
        used += need
    tables = []
    for i, chunk in enumerate(chunks):
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        # at least as wide as the title, which would wrap otherwise
        t = Table(title=f"{title}{part}", min_width=min(len(title) + len(part), width))
        for header, _ in fixed:
            t.add_column(header, no_wrap=True)
        for header, _ in chunk:
            t.add_column(header, no_wrap=True, justify="right")
        rows = len(fixed[0][1]) if fixed else len(chunk[0][1]) if chunk else 0
        for r in range(rows):
            t.add_row(*(escape(c[r]) for _, c in fixed), *(escape(c[r]) for _, c in chunk))
        tables.append(t)
    return tables


# ── ids: a unique start of one will do ────────────────────────────────────────

FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_CANDIDATES = 10


def every_item(list_page: Callable[[int, int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every item of a paged list endpoint (``list_page(limit, offset)``)."""
    offset = 0
    while True:
        page = list_page(500, offset)
        yield from page["items"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return


def match_id(text: str, items: Iterable[dict[str, Any]], noun: str,
             describe: Callable[[dict[str, Any]], str], lister: str,
             field: str = "id") -> str:
    """The id of the one item whose ``field`` (its id) starts with ``text`` (dashes
    and case aside). Exit 1 when none does, 2 (listing them) when several do."""
    prefix = text.strip().lower().replace("-", "")
    candidates = [item for item in items
                  if str(item[field]).lower().replace("-", "").startswith(prefix)]
    if len(candidates) == 1:
        return str(candidates[0]["id"])
    if not candidates:
        raise fail(f"no {noun} {'id' if field == 'id' else field} starts with {text!r} "
                   f"({lister} lists them)")
    err.print(f"[red]error: {escape(repr(text))} is ambiguous: it starts {len(candidates)} "
              f"{noun}s' {'ids' if field == 'id' else field + 'es'}; give more of it:[/]",
              soft_wrap=True)
    for item in candidates[:MAX_CANDIDATES]:
        err.print(f"  {item['id']}  {escape(describe(item))}", soft_wrap=True, highlight=False)
    if len(candidates) > MAX_CANDIDATES:
        err.print(f"  … and {len(candidates) - MAX_CANDIDATES} more")
    raise typer.Exit(2)


def resolve_id(text: str, noun: str, list_page: Callable[[int, int], dict[str, Any]],
               describe: Callable[[dict[str, Any]], str], lister: str) -> str:
    """A full id as it is (the API answers 404 for an unknown one); a start of one
    resolved through the list endpoint."""
    typed = text.strip().lower()
    if FULL_ID.fullmatch(typed):
        return typed
    if not re.fullmatch(r"[0-9a-f-]+", typed) or not typed.replace("-", ""):
        article = "an" if noun[0] in "aeiou" else "a"
        raise fail(f"{text!r} is not {article} {noun} id: ids are hexadecimal (e.g. "
                   "6adc50ba, or the whole id)", code=2)
    return match_id(typed, every_item(list_page), noun, describe, lister)


def resolve_run(mx: MixlabClient, text: str) -> str:
    return resolve_id(
        text, "run", lambda limit, offset: mx.list_runs(limit=limit, offset=offset),
        lambda r: f"{r['status']}, experiment {r['experiment_id'][:8]}, created "
                  f"{when(r['created_at'])}", "mixlab runs list")


def resolve_experiment(mx: MixlabClient, text: str) -> str:
    return resolve_id(
        text, "experiment",
        lambda limit, offset: mx.list_experiments(limit=limit, offset=offset),
        lambda e: f"{e['name']}, created {when(e['created_at'])}", "mixlab experiments list")


def resolve_dataset(mx: MixlabClient, text: str) -> str:
    return resolve_id(
        text, "dataset", lambda limit, offset: mx.list_datasets(limit=limit, offset=offset),
        lambda d: f"{d['name']}, {d['status']}", "mixlab datasets list")


# ── datasets ──────────────────────────────────────────────────────────────────

def _splits(sizes: dict[str, int] | None) -> str:
    return " ".join(f"{k} {v}" for k, v in sizes.items()) if sizes else "-"


def _dataset_line(ds: dict[str, Any]) -> str:
    if ds["status"] != "ready":
        return f"{ds['id']}  {escape(ds['name'])}: {_status(ds)}"
    return (f"{ds['id']}  {escape(ds['name'])}: {ds['num_samples']} samples, "
            f"{len(ds['classes'])} classes{' (multi-label)' if ds.get('multilabel') else ''}, "
            f"splits {_splits(ds['split_sizes'])}"
            + (f", {ds['noisy_train_labels']} noisy training labels"
               if ds["noisy_train_labels"] else ""))


def _status(ds: dict[str, Any]) -> str:
    if ds["status"] == "preparing":
        return f"preparing ({ds['stage'] or 'queued'}, {ds['progress']:.0%})"
    if ds["status"] == "failed":
        return f"failed ({ds['error_count']} problem(s))"
    return str(ds["status"])


def report_dataset_errors(ds: dict[str, Any]) -> None:
    """``error: dataset … failed``, then one ``field: message`` line per problem."""
    errors = ds.get("errors") or []
    more = ds["error_count"] - len(errors)
    err.print(f"[red]error: dataset {ds['id']} ({escape(ds['name'])}) failed to prepare: "
              f"{ds['error_count']} problem(s)[/]", soft_wrap=True)
    for e in errors:
        err.print(f"  {escape(e['field'])}: {escape(e['message'])}", soft_wrap=True,
                  highlight=False)
    if more > 0:
        err.print(f"  … and {more} more")


def watch_dataset(mx: MixlabClient, dataset_id: str, name: str) -> dict[str, Any]:
    """Poll a preparing dataset until it is ready or failed, with a progress bar."""
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}% {task.fields[stage]}"), TimeElapsedColumn())
    with Progress(*columns, console=err) as bars:
        task = bars.add_task(escape(name), total=1.0, stage="queued")

        def update(ds: dict[str, Any]) -> None:
            bars.update(task, completed=ds["progress"],
                        stage=ds["stage"] or ds["status"])

        return mx.wait_for_dataset(dataset_id, timeout=24 * 3600, interval=POLL_S,
                                   on_update=update)


def _created(mx: MixlabClient, ds: dict[str, Any], wait: bool, as_json: bool,
             verb: str) -> None:
    """Follow a just-created dataset (``--wait``) and print the outcome; exit 1 when
    its preparation failed, 130 when the user stops watching."""
    if wait and ds["status"] == "preparing":
        try:
            ds = watch_dataset(mx, ds["id"], ds["name"])
        except KeyboardInterrupt:
            err.print(f"stopped watching; the dataset goes on preparing (mixlab datasets "
                      f"show {ds['id']})")
            raise typer.Exit(130) from None
    if as_json:
        print_json(ds)
    elif ds["status"] == "preparing":
        out.print(f"{verb} {_dataset_line(ds)}; follow it with mixlab datasets show "
                  f"{ds['id']}")
    elif ds["status"] == "ready":
        out.print(f"{verb} {_dataset_line(ds)}")
    if ds["status"] == "failed":
        if not as_json:
            report_dataset_errors(ds)
        raise typer.Exit(1)


Wait = Annotated[bool, typer.Option("--wait/--no-wait",
                                    help="Follow the preparation until the dataset is ready "
                                         "(or failed, listing why).")]
SpecOption = Annotated[str | None, typer.Option(
    "--spec", help="Parquet / archives: which column is which modality, as JSON or @FILE "
                   "(e.g. '{\"label\": \"y\", \"multilabel\": true}').")]


@datasets_app.command("list")
def datasets_list(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False,
                  limit: Limit = 50, offset: Offset = 0) -> None:
    """List datasets, newest first."""
    with connect(url, api_key) as mx:
        page = mx.list_datasets(limit=limit, offset=offset)
    if as_json:
        return print_json(page)
    t = table("id", "name", "status", "samples", "classes", "splits", "created",
              title=f"datasets ({len(page['items'])} of {page['total']})")
    for ds in page["items"]:
        ready = ds["status"] == "ready"
        t.add_row(ds["id"], escape(ds["name"]), _status(ds),
                  str(ds["num_samples"]) if ready else "-",
                  str(len(ds["classes"])) if ready else "-", _splits(ds["split_sizes"]),
                  when(ds["created_at"]))
    out.print(t)


@datasets_app.command("show")
def datasets_show(dataset: DatasetArg, url: Url = DEFAULT_URL,
                  api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Describe a dataset: status, then (once ready) modalities, classes, split sizes."""
    with connect(url, api_key) as mx:
        ds = mx.get_dataset(resolve_dataset(mx, dataset))
    if as_json:
        return print_json(ds)
    rows: dict[str, Any] = {"id": ds["id"], "name": ds["name"], "status": _status(ds),
                            "source": json.dumps(ds["source"]),
                            "created": when(ds["created_at"]),
                            "started": when(ds["started_at"]),
                            "finished": when(ds["finished_at"])}
    if ds["status"] == "ready":
        rows.update({"samples": ds["num_samples"], "multi-label": ds.get("multilabel"),
                     "splits": _splits(ds["split_sizes"]),
                     "noisy training labels": ds["noisy_train_labels"],
                     "size": f"{ds['size_bytes']:,} bytes"})
    out.print(kv_table(rows, title=f"dataset {escape(ds['name'])}"))
    if ds["status"] == "failed":
        report_dataset_errors(ds)
        return
    if ds["status"] != "ready":
        return
    mods = table("modality", "kind", "shape", "dtype", title="modalities")
    for m in ds["modalities"]:
        mods.add_row(m["name"], m["kind"], "×".join(map(str, m["shape"])), m["dtype"])
    out.print(mods)
    splits = list(ds["split_sizes"])
    classes = table("index", "class", "count", *splits, title="classes")
    for c in ds["classes"]:
        classes.add_row(str(c["index"]), escape(c["name"]), str(c["count"]),
                        *(str(c["split_counts"].get(s, 0)) for s in splits))
    out.print(classes)


def _spec_argument(spec: str | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text()
        except OSError as exc:
            raise fail(f"--spec: cannot read {spec[1:]}: {exc}") from None
    return _json_object(spec, "--spec")


def _options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@datasets_app.command("create")
def datasets_create(
        builtin: Annotated[str | None, typer.Option(
            help="A built-in: digits, fashion-mnist, avmnist, moving-digits, synthetic.")] = None,
        file: Annotated[Path | None, typer.Option(
            exists=True, dir_okay=False, readable=True,
            help="Upload a file: .npz, .parquet, .zip, .tar.gz / .tgz.")] = None,
        uri: Annotated[str | None, typer.Option(
            help="Let the server read file:///… (under its import roots) or s3://… "
                 "(under its import prefixes)")] = None,
        option: Annotated[list[str] | None, typer.Option(
            "--option", "-o", metavar="KEY=VALUE",
            help="Built-in option (repeatable), e.g. label_noise=0.4.")] = None,
        spec: SpecOption = None,
        name: Annotated[str | None, typer.Option(help="Defaults to the source's name.")]
        = None,
        wait: Wait = True, url: Url = DEFAULT_URL,
        api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Register a dataset from a built-in, a file or a URI.

    Give exactly one of --builtin, --file or --uri. A worker prepares the dataset;
    --wait (the default) follows it until it is ready.
    """
    if sum(x is not None for x in (builtin, file, uri)) != 1:
        raise fail("give exactly one of --builtin, --file or --uri", code=2)
    if option and builtin is None:
        raise fail("--option applies to --builtin", code=2)
    if spec is not None and builtin is not None:
        raise fail("--spec applies to --file and --uri", code=2)
    body_spec = _spec_argument(spec)
    with connect(url, api_key) as mx:
        if builtin is not None:
            ds = mx.create_builtin_dataset(builtin, name=name, **_options(option or []))
        elif file is not None:
            with err.status(f"uploading {file.name} ({file.stat().st_size:,} bytes)…"):
                ds = mx.upload_dataset(file, name=name, spec=body_spec)
        else:
            assert uri is not None
            ds = mx.create_uri_dataset(uri, name=name, spec=body_spec)
        _created(mx, ds, wait, as_json, "registered")


@datasets_app.command("add-builtin")
def datasets_add_builtin(
        builtin: Annotated[str, typer.Argument(
            metavar="BUILTIN",
            help="Built-in dataset: digits, fashion-mnist, avmnist, moving-digits, "
                 "synthetic.")] = "digits",
        label_noise: Annotated[float | None, typer.Option(
            show_default=False,
            help="Share of training labels flipped (digits, fashion-mnist, avmnist; "
                 "default 0).")] = None,
        seed: Annotated[int | None, typer.Option(
            show_default=False,
            help="Seed of the built-in's randomness: its label noise, or the synthetic "
                 "data (default 0).")] = None,
        option: Annotated[list[str] | None, typer.Option(
            "--option", "-o", metavar="KEY=VALUE",
            help="Any other option of the built-in (repeatable), e.g. num_samples=400 for "
                 "synthetic; VALUE is read as JSON when it parses.")] = None,
        name: Annotated[str | None, typer.Option(help="Defaults to the built-in's name.")]
        = None,
        wait: Wait = True, url: Url = DEFAULT_URL,
        api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Register a built-in dataset, optionally with label noise.

    Only the options given are sent; the built-in's defaults fill in the rest.
    """
    options = _options(option or [])
    if label_noise is not None:
        options["label_noise"] = label_noise
    if seed is not None:
        options["seed"] = seed
    with connect(url, api_key) as mx:
        ds = mx.create_builtin_dataset(builtin, name=name, **options)
        _created(mx, ds, wait, as_json, "registered")


@datasets_app.command("upload")
def datasets_upload(
        file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                             help=".npz (one array per modality plus label), "
                                                  ".parquet, .zip or .tar.gz")],
        name: Annotated[str | None, typer.Option(help="Defaults to the file name.")] = None,
        spec: SpecOption = None,
        wait: Wait = True, url: Url = DEFAULT_URL,
        api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Upload a dataset file; it is prepared by a worker (--wait follows it)."""
    body_spec = _spec_argument(spec)
    size = file.stat().st_size
    with connect(url, api_key) as mx:
        with err.status(f"uploading {file.name} ({size:,} bytes)…"):
            ds = mx.upload_dataset(file, name=name, spec=body_spec)
        _created(mx, ds, wait, as_json, "uploaded")


@datasets_app.command("delete")
def datasets_delete(dataset: DatasetArg, url: Url = DEFAULT_URL,
                    api_key: ApiKey = None) -> None:
    """Delete a dataset no experiment uses (one still preparing is cancelled)."""
    with connect(url, api_key) as mx:
        dataset_id = resolve_dataset(mx, dataset)
        mx.delete_dataset(dataset_id)
    out.print(f"deleted dataset {dataset_id}")


# ── preview ───────────────────────────────────────────────────────────────────

def preview(
        dataset: DatasetArg,
        method: Annotated[str, typer.Option(
            help="none, mixup, cutmix, mixup_cutmix, cross_modal, manifold_mixup, mixgen.")
        ] = "mixup",
        alpha: Annotated[float, typer.Option(help="Beta(α, α) of λ.")] = 1.0,
        seed: int = 0,
        n: Annotated[int, typer.Option("-n", help="Number of mixed samples.")] = 8,
        split: Annotated[str, typer.Option(help="train, val or test.")] = "train",
        modality: Annotated[str | None, typer.Option(
            help="Which modality the PNG shows (default: the first image).")] = None,
        spec: Annotated[str | None, typer.Option(
            help='More augmentation fields as JSON, e.g. \'{"ops": {"text": "token_cutmix"}}\'.'
        )] = None,
        output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                             help="Where the PNG grid goes.")]
        = Path("preview.png"),
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Mix N samples of a dataset (seeded), save the PNG grid and show λ and labels."""
    extra = _json_object(spec, "--spec") if spec else {}
    with connect(url, api_key) as mx:
        result = mx.preview(resolve_dataset(mx, dataset),
                            **{"method": method, "alpha": alpha, "seed": seed, "n": n,
                               "split": split, **extra})
        urls = result.get("image_urls") or {}
        if modality is not None and modality not in urls:
            raise fail(f"--modality: the dataset has {', '.join(urls) or 'no'} modalities")
        png = mx.fetch(urls[modality] if modality else result["image_url"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(png)
    if as_json:
        return print_json(result)
    cutmix = any(s["box"] for s in result["samples"])
    t = table("#", "A", "B", "λ", "label mixture", *(["box"] if cutmix else []),
              title=f"{method} α={alpha} seed={seed} ({split})")
    for i, s in enumerate(result["samples"]):
        mixture = ", ".join(f"{escape(k)}: {v:.3f}" for k, v in
                            sorted(s["label_mixture"].items(), key=lambda kv: -kv[1]))
        box = [" ".join(map(str, s["box"])) if s["box"] else "-"] if cutmix else []
        t.add_row(str(i), f"#{s['index_a']} ({escape(s['label_a'])})",
                  f"#{s['index_b']} ({escape(s['label_b'])})", f"{s['lam']:.3f}", mixture, *box)
    out.print(t)
    out.print(f"wrote {output} ({len(png):,} bytes)")


# ── predict ───────────────────────────────────────────────────────────────────

def _indices_argument(text: str | None) -> list[int] | None:
    """``0,1,2`` (and ranges ``0-9``) → row positions; exit 2 on anything else."""
    if text is None:
        return None
    indices: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        try:
            if dash:
                indices.extend(range(int(first), int(last) + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise fail(f"--indices: {part!r} is not a row number or range (e.g. 0,1,2 or "
                       "0-9)", code=2) from None
    if not indices:
        raise fail("--indices: give at least one row", code=2)
    return indices


def _label_text(value: str | list[str] | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(value) or "(none)"
    return value


def predict(
        run: Annotated[str, typer.Argument(
            metavar="RUN", show_default=False,
            help="A succeeded run: its id, or a unique start of it.")],
        file: Annotated[Path | None, typer.Argument(
            exists=True, dir_okay=False, readable=True, show_default=False,
            help="Samples to predict: .npz, .parquet, .zip, .tar.gz / .tgz (labels "
                 "optional). Or --dataset.")] = None,
        dataset: Annotated[str | None, typer.Option(
            "--dataset", metavar="DATASET",
            help="Predict rows of this dataset's split instead of a file (an id, or a "
                 "unique start of one).")] = None,
        split: Annotated[str, typer.Option(help="train, val or test (with --dataset).")]
        = "test",
        indices: Annotated[str | None, typer.Option(
            help="Rows of the split, e.g. 0,1,2 or 0-99 (default: the whole split).")] = None,
        spec: SpecOption = None,
        show: Annotated[int, typer.Option(
            min=0, help="Rows shown in the table (0: all); --json gives every row.")] = 20,
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Predict with a succeeded run's model on a file or a dataset's split.

    Prints a table of predictions and, where the samples have labels, the accuracy.
    """
    if (file is None) == (dataset is None):
        raise fail("give exactly one of FILE or --dataset", code=2)
    if file is not None and indices is not None:
        raise fail("--indices applies to --dataset", code=2)
    if dataset is not None and spec is not None:
        raise fail("--spec applies to a FILE", code=2)
    rows = _indices_argument(indices)
    body_spec = _spec_argument(spec)
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        if file is not None:
            with err.status(f"uploading {file.name} ({file.stat().st_size:,} bytes)…"):
                result = mx.predict(run_id, file=file, spec=body_spec)
        else:
            assert dataset is not None
            dataset = resolve_dataset(mx, dataset)
            with err.status("predicting…"):
                result = mx.predict(run_id, dataset_id=dataset, split=split, indices=rows)
    if as_json:
        return print_json(result)
    source = (escape(file.name) if file is not None
              else f"{split} split of {(dataset or '')[:8]}")
    items = result["predictions"]
    shown = items if show == 0 else items[:show]
    t = table("index", "predicted", "top probability", "label", "",
              title=f"{source}: {result['n']} samples")
    for p in shown:
        best = max(p["probabilities"].items(), key=lambda kv: kv[1])
        top = f"{best[1]:.3f}" if isinstance(p["predicted"], str) \
            else f"{escape(best[0])} {best[1]:.3f}"
        right = (set(p["predicted"]) == set(p["label"]) if isinstance(p["label"], list)
                 else p["predicted"] == p["label"])
        mark = "" if p["label"] is None else ("[green]✓[/]" if right else "[red]✗[/]")
        t.add_row(str(p["index"]), escape(_label_text(p["predicted"])), top,
                  escape(_label_text(p["label"])), mark)
    out.print(t)
    if len(shown) < len(items):
        out.print(f"… {len(items) - len(shown)} more rows (--show 0 for all, --json for the "
                  "full reply)")
    kind = "exact-match accuracy" if result["task"] == "multilabel" else "accuracy"
    if result["accuracy"] is None:
        out.print(f"{kind}: - (no sample has a label)")
    else:
        out.print(f"{kind}: {result['accuracy']:.4f} over {result['n_labelled']} labelled "
                  f"of {result['n']} samples")
    for task, accuracy in (result.get("task_accuracy") or {}).items():
        # multitask: the rows show the first task; --json has every task's
        out.print(f"  {task}: {accuracy:.4f}")


# ── runs: watching ────────────────────────────────────────────────────────────

def _follow(mx: MixlabClient, rid: str, latest: dict[str, dict[str, Any]],
            failures: dict[str, Exception], changed: threading.Event) -> None:
    """Keep ``latest[rid]`` current from the run's event stream (server-sent events),
    or by polling when the stream is not available; on a thread of its own."""
    try:
        with mx.copy() as own:
            try:
                for event, data in own.run_events(rid):
                    if event == "run":
                        latest[rid] = data
                        changed.set()
                if latest.get(rid, {}).get("status") in TERMINAL:
                    return
            except (httpx.HTTPError, MixlabError, ValueError):
                pass  # an older server, a proxy that buffers: poll instead
            while True:
                run = own.get_run(rid)
                latest[rid] = run
                changed.set()
                if run["status"] in TERMINAL:
                    return
                time.sleep(POLL_S)
    except Exception as exc:  # handed to the watching thread, which raises it
        failures[rid] = exc
        changed.set()


def watch_runs(mx: MixlabClient, run_ids: list[str],
               on_done: Callable[[dict[str, Any]], None] | None = None,
               labels: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Follow every run until it is terminal, one progress bar each (on stderr),
    named by ``labels`` (run id → label) or the id's first 8 characters. Each
    run is followed through its live events, or by polling where they fail."""
    final: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    failures: dict[str, Exception] = {}
    changed = threading.Event()
    for rid in run_ids:
        threading.Thread(target=_follow, args=(mx, rid, latest, failures, changed),
                         name=f"watch-{rid[:8]}", daemon=True).start()
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[status]:>9} step {task.fields[steps]} · epoch "
                          "{task.fields[epoch]} · {task.fields[rate]} samples/s · "
                          "ETA {task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=err) as bars:
        names = labels or {}
        tasks = {rid: bars.add_task(names.get(rid, rid[:8]), total=None, status="…", steps="-",
                                    epoch="-", rate="-", eta="-") for rid in run_ids}
        while len(final) < len(run_ids):
            changed.wait(POLL_S)  # woken by any run's change; the timeout keeps ETAs moving
            changed.clear()
            if failures:
                raise next(iter(failures.values()))
            for rid, run in list(latest.items()):
                if rid in final:
                    continue
                p = run["progress"]
                bars.update(tasks[rid], total=p["total_steps"] or None, completed=p["step"],
                            status=run["status"], steps=f"{p['step']}/{p['total_steps'] or '?'}",
                            epoch=f"{p['epoch']}/{p['epochs']}",
                            rate=f"{p['samples_per_s']:.0f}" if p["samples_per_s"] else "-",
                            eta=duration(p["eta_s"]) if run["status"] == "running" else "-")
                if run["status"] in TERMINAL:
                    final[rid] = run
    for rid in run_ids:
        if on_done:
            on_done(final[rid])
    return final


def metrics_tables(runs: list[dict[str, Any]]) -> list[Table]:
    """Latest metrics: one row per key, one column per run (split in several tables
    when the runs do not fit side by side)."""
    keys = sorted({k for r in runs for k in r["metrics"]})
    return fitted_tables("final metrics", [("metric", keys)],
                         [(r["id"][:8], [number(r["metrics"][k]) if k in r["metrics"] else "-"
                                         for k in keys]) for r in runs], out.width)


def report_outcome(runs: list[dict[str, Any]]) -> int:
    """Print the final metrics and any errors; 0 when every run succeeded."""
    if any(r["metrics"] for r in runs):
        for t in metrics_tables(runs):
            out.print(t)
    for r in runs:
        if r["status"] != "succeeded":
            reason = f": {r['error']}" if r["error"] else ""
            err.print(f"[red]run {r['id']} {r['status']}{escape(reason)}[/]")
    return 0 if all(r["status"] == "succeeded" for r in runs) else 1


def _stopped_watching(run_ids: list[str]) -> typer.Exit:
    err.print("stopped watching; the run goes on (mixlab runs cancel "
              f"{' '.join(run_ids)} to stop it)")
    return typer.Exit(130)


# ── experiments ───────────────────────────────────────────────────────────────

def _json_object(text: str, name: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise fail(f"{name}: expected a JSON object")
    return data


def _read_spec(spec: typer.FileText) -> dict[str, Any]:
    return _json_object(spec.read(), getattr(spec, "name", "spec"))


@experiments_app.command("submit")
def experiments_submit(
        spec: Annotated[typer.FileText, typer.Argument(
            metavar="SPEC", help="Experiment spec (JSON file, or - for stdin).")],
        watch: Annotated[bool, typer.Option("--watch", "-w",
                                            help="Follow the runs until they end.")] = False,
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Create an experiment from a JSON spec and queue its runs."""
    body = _read_spec(spec)
    with connect(url, api_key) as mx:
        created = mx.create_experiment(body)
        run_ids = [str(r) for r in created["run_ids"]]
        if as_json:
            print_json(created)
        else:
            out.print(f"experiment {created['experiment_id']}")
            for rid in run_ids:
                out.print(f"run {rid}")
        if not watch:
            return
        try:
            final = watch_runs(mx, run_ids)
        except KeyboardInterrupt:
            raise _stopped_watching(run_ids) from None
    runs = [final[rid] for rid in run_ids]
    if as_json:
        print_json(runs)
        raise typer.Exit(0 if all(r["status"] == "succeeded" for r in runs) else 1)
    raise typer.Exit(report_outcome(runs))


@experiments_app.command("list")
def experiments_list(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False,
                     limit: Limit = 50, offset: Offset = 0) -> None:
    """List experiments, newest first."""
    with connect(url, api_key) as mx:
        page = mx.list_experiments(limit=limit, offset=offset)
    if as_json:
        return print_json(page)
    t = table("id", "name", "dataset", "method", "epochs", "runs", "created",
              title=f"experiments ({len(page['items'])} of {page['total']})")
    for e in page["items"]:
        runs = ", ".join(f"{r['id'][:8]} {r['status']}" for r in e["runs"])
        t.add_row(e["id"], escape(e["name"]), e["dataset_id"][:8],
                  str(e["spec"].get("augmentation", {}).get("method", "-")),
                  str(e["spec"].get("training", {}).get("epochs", "-")), runs,
                  when(e["created_at"]))
    out.print(t)


@experiments_app.command("show")
def experiments_show(experiment: ExperimentArg, url: Url = DEFAULT_URL, api_key: ApiKey = None,
                     as_json: AsJson = False) -> None:
    """Show an experiment: its spec and its runs."""
    with connect(url, api_key) as mx:
        exp = mx.get_experiment(resolve_experiment(mx, experiment))
        runs = [mx.get_run(str(r["id"])) for r in exp["runs"]]
    if as_json:
        return print_json({**exp, "runs": runs})
    spec = exp["spec"]
    rows: dict[str, Any] = {"id": exp["id"], "name": exp["name"], "dataset": exp["dataset_id"],
                            "task": exp["task"], "created": when(exp["created_at"])}
    for section in ("model", "augmentation", "training"):
        if isinstance(spec.get(section), dict):
            rows[section] = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec[section].items())
    out.print(kv_table(rows, title=f"experiment {escape(exp['name'])}"))
    t = table("run", "status", "epoch", "test_acc", "device", "finished")
    for r in runs:
        acc = r["metrics"].get("test_acc")
        t.add_row(r["id"], r["status"], f"{r['progress']['epoch']}/{r['progress']['epochs']}",
                  number(acc) if acc is not None else "-", r["worker"]["device"] or "-",
                  when(r["finished_at"]))
    out.print(t)


@experiments_app.command("delete")
def experiments_delete(
        experiment: ExperimentArg,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")]
        = False,
        url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Delete an experiment with its runs, their metrics and checkpoints.

    Live runs are cancelled first: a running one stops at its next step. Asks before
    deleting unless --yes is given (without a terminal to ask on, --yes is needed).
    """
    with connect(url, api_key) as mx:
        experiment_id = resolve_experiment(mx, experiment)
        exp = mx.get_experiment(experiment_id)
        runs = exp["runs"]
        live = [r for r in runs if r["status"] not in TERMINAL]
        what = (f"experiment {exp['id']} ({exp['name']}) with its {len(runs)} run(s)"
                + (f", {len(live)} of them live" if live else ""))
        if not yes:
            if not sys.stdin.isatty():
                raise fail(f"not deleting {what} without --yes (no terminal to ask on)",
                           code=2)
            if not typer.confirm(f"Delete {what}, their metrics and checkpoints?", err=True):
                raise fail("not deleted")
        mx.delete_experiment(experiment_id)
    out.print(f"deleted {escape(what)}" + ("; the live ones were cancelled" if live else ""))


# ── runs ──────────────────────────────────────────────────────────────────────

class StatusFilter(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


@runs_app.command("list")
def runs_list(
        status: Annotated[StatusFilter | None, typer.Option(
            case_sensitive=False, show_default=False, metavar="STATUS",
            help="Only runs in this state: queued, running, succeeded, failed or cancelled.")]
        = None,
        experiment: Annotated[str | None, typer.Option(
            metavar="EXPERIMENT", show_default=False,
            help="Only this experiment's runs (an id, or a unique start of one).")] = None,
        sweep: Annotated[str | None, typer.Option(
            metavar="SWEEP", show_default=False,
            help="Only this sweep's runs (an id, or a unique start of one).")] = None,
        limit: Limit = 50, offset: Offset = 0,
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """List runs, newest first: name, method, α, status, progress, test accuracy, device."""
    from app.cli_sweeps import resolve_sweep  # it imports this module

    with connect(url, api_key) as mx:
        experiment_id = resolve_experiment(mx, experiment) if experiment else None
        sweep_id = resolve_sweep(mx, sweep) if sweep else None
        page = mx.list_runs(limit=limit, offset=offset,
                            status=status.value if status else None,
                            experiment_id=experiment_id, sweep_id=sweep_id)
    if as_json:
        return print_json(page)
    filters = ", ".join(f for f in (status.value if status else "",
                                    f"experiment {experiment_id[:8]}" if experiment_id else "",
                                    f"sweep {sweep_id[:8]}" if sweep_id else "")
                        if f)
    t = table("id", "name", "method", "α", "status", "epoch", "step", "test_acc", "device",
              "created", "finished", title=f"runs{f' ({filters})' if filters else ''}: "
                                           f"{len(page['items'])} of {page['total']}")
    for r in page["items"]:
        p = r["progress"]
        acc = r["metrics"].get("test_acc")
        t.add_row(r["id"], r["name"], r["method"], number(r["alpha"]), r["status"],
                  f"{p['epoch']}/{p['epochs']}", f"{p['step']}/{p['total_steps'] or '?'}",
                  number(acc) if acc is not None else "-", r["worker"]["device"] or "-",
                  when(r["created_at"]), when(r["finished_at"]))
    out.print(t)


@runs_app.command("show")
def runs_show(run: RunArg, url: Url = DEFAULT_URL,
              api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Status, progress, latest metrics, worker and error of a run."""
    with connect(url, api_key) as mx:
        found = mx.get_run(resolve_run(mx, run))
    if as_json:
        return print_json(found)
    p = found["progress"]
    rows: dict[str, Any] = {
        "id": found["id"], "experiment": found["experiment_id"],
        "status": found["status"] + (" (cancel requested)" if found["cancel_requested"]
                                     and found["status"] == "running" else ""),
        "progress": f"step {p['step']}/{p['total_steps']}, epoch {p['epoch']}/{p['epochs']}",
        "samples/s": f"{p['samples_per_s']:.0f}" if p["samples_per_s"] else "-",
        "ETA": duration(p["eta_s"]) if found["status"] == "running" else "-",
        "attempt": found["attempt"],
        "worker": f"{found['worker']['host'] or '-'} · {found['worker']['device'] or '-'}",
        "created": when(found["created_at"]), "started": when(found["started_at"]),
        "finished": when(found["finished_at"]), "checkpoint": found["checkpoint_url"] or "-"}
    if found["error"]:
        rows["error"] = found["error"]
    out.print(kv_table(rows, title=f"run {found['id'][:8]}"))
    if found["metrics"]:
        for t in metrics_tables([found]):
            out.print(t)


@runs_app.command("watch")
def runs_watch(run: RunArg, url: Url = DEFAULT_URL,
               api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Follow a run until it ends; exit 1 if it failed or was cancelled."""
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        try:
            final = watch_runs(mx, [run_id])[run_id]
        except KeyboardInterrupt:
            raise _stopped_watching([run_id]) from None
    if as_json:
        print_json(final)
        raise typer.Exit(0 if final["status"] == "succeeded" else 1)
    raise typer.Exit(report_outcome([final]))


@runs_app.command("cancel")
def runs_cancel(run: RunArg, url: Url = DEFAULT_URL,
                api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Cancel a run: a queued one at once, a running one within a step or two."""
    with connect(url, api_key) as mx:
        found = mx.cancel_run(resolve_run(mx, run))
    if as_json:
        return print_json(found)
    if found["status"] == "cancelled":
        out.print(f"run {found['id']} cancelled")
    else:
        out.print(f"run {found['id']} {found['status']}: cancel requested, it stops within a "
                  f"step or two (mixlab runs watch {found['id'][:8]})")


def metric_history_tables(history: dict[str, list[dict[str, Any]]], keys: list[str],
                          title: str, width: int) -> list[Table]:
    """Metric history laid out to stay readable however many keys there are.

    Keys recorded at the same (epoch, step) points share a table, one row per point
    (per step: train_loss_step, lr; per epoch: train_loss, val_acc, …), split into
    several tables when its columns do not fit in ``width``. Keys recorded once
    (test_acc, temperature, …) go in one long table, a row per key.
    """
    groups: dict[tuple[tuple[int, int], ...], list[str]] = {}
    once: list[str] = []
    for key in keys:
        points = tuple(sorted({(p["epoch"], p["step"]) for p in history[key]}))
        if len(points) == 1:
            once.append(key)
        else:
            groups.setdefault(points, []).append(key)
    tables: list[Table] = []
    for points, group in sorted(groups.items(), key=lambda g: -len(g[0])):
        values = {k: {(p["epoch"], p["step"]): p["value"] for p in history[k]} for k in group}
        per = "step" if len({e for e, _ in points}) < len(points) else "epoch"
        tables += fitted_tables(
            f"{title} by {per}",
            [("epoch", [str(e) for e, _ in points]), ("step", [str(s) for _, s in points])],
            [(k, [number(values[k][pt]) for pt in points]) for k in group], width)
    if once:
        t = Table(title=f"{title} recorded once" if groups else title)
        for col in ("metric", "value", "epoch", "step"):
            t.add_column(col, no_wrap=True, justify="left" if col == "metric" else "right")
        for key in once:
            point = history[key][-1]
            t.add_row(escape(key), number(point["value"]), str(point["epoch"]),
                      str(point["step"]))
        tables.append(t)
    return tables


@runs_app.command("metrics")
def runs_metrics(
        run: RunArg,
        key: Annotated[list[str] | None, typer.Option(
            "--key", "-k", metavar="KEY",
            help="A metric to show, e.g. val_acc (repeatable; default: every metric).")]
        = None,
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Metric history of a run, by epoch and step.

    Metrics recorded at the same points share a table (split to fit the width);
    those recorded once, such as test_acc, are listed a row each.
    """
    asked = list(dict.fromkeys(key or []))
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        if asked:
            history: dict[str, list[dict[str, Any]]] = {}
            for k in asked:
                history.update(mx.metrics(run_id, k))
            missing = [k for k in asked if not history.get(k)]
            recorded = sorted(mx.metrics(run_id)) if missing else []
        else:
            history = mx.metrics(run_id)
            missing, recorded = [], []
    if as_json:
        return print_json(history)
    for k in missing:
        err.print(f"no metric {escape(k)} recorded for run {run_id[:8]}"
                  + (f" (it has {escape(', '.join(recorded))})" if recorded else ""),
                  soft_wrap=True)
    keys = [k for k in asked if history.get(k)] if asked else sorted(history)
    if not keys:
        if not asked:
            err.print(f"no metrics recorded for run {run_id[:8]}")
        return
    for t in metric_history_tables(history, keys, f"run {run_id[:8]} metrics", out.width):
        out.print(t)


@runs_app.command("logs")
def runs_logs(
        run: RunArg,
        attempt: Annotated[int | None, typer.Option(
            min=1, show_default=False,
            help="Only this attempt's lines (default: every attempt, in order).")] = None,
        follow: Annotated[bool, typer.Option(
            "--follow", "-f", help="Keep printing new lines until the run has ended.")]
        = False,
        url: Url = DEFAULT_URL, api_key: ApiKey = None,
        as_json: Annotated[bool, typer.Option(
            "--json", help="One JSON object per line (JSON Lines).")] = False) -> None:
    """What the worker logged for a run: its start, each epoch's metrics, errors with
    their tracebacks, its outcome; one attempt after another."""
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        shown_attempt = None
        try:
            for line in mx.iter_logs(run_id, attempt, follow=follow):
                if as_json:
                    print(json.dumps(line), flush=True)
                    continue
                if line["attempt"] != shown_attempt:
                    shown_attempt = line["attempt"]
                    out.print(f"[bold]── attempt {shown_attempt} ──[/]")
                clock = line["at"][11:19]  # ISO time of day, UTC
                out.print(f"{clock} {line['level']:<7} {escape(line['message'])}",
                          soft_wrap=True, highlight=False)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    if shown_attempt is None and not as_json:
        err.print(f"run {run_id[:8]} has logged nothing yet")


@runs_app.command("evaluation")
def runs_evaluation(run: RunArg, url: Url = DEFAULT_URL, api_key: ApiKey = None,
                    as_json: AsJson = False) -> None:
    """A succeeded run's scores on the test split.

    Per class: precision, recall, F1 and support (multi-label: also AP and the counts
    at the threshold); for classification, the confusion matrix and the accuracy.
    """
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        ev = mx.evaluation(run_id)
    if as_json:
        return print_json(ev)
    short = run_id[:8]
    scores = ev["per_class"]
    multilabel = ev.get("class_confusion") is not None
    title = (f"run {short}: {ev['split']} split, per class"
             + (f" (threshold {ev['threshold']:g})" if multilabel
                and ev.get("threshold") is not None else ""))
    t = Table(title=title, show_footer=len(scores) > 1, min_width=min(len(title), out.width))
    mean = (lambda k: sum(c[k] for c in scores) / len(scores)) if scores else (lambda k: 0.0)
    columns: list[tuple[str, str]] = [("precision", f"{mean('precision'):.3f}"),
                                      ("recall", f"{mean('recall'):.3f}"),
                                      ("F1", f"{mean('f1'):.3f}"),
                                      ("support", str(sum(c["support"] for c in scores)))]
    if multilabel:
        aps = [c["ap"] for c in scores if c.get("ap") is not None]
        columns.append(("AP", f"{sum(aps) / len(aps):.3f}" if aps else "-"))
        columns += [(name, "") for name in ("TN", "FP", "FN", "TP")]
    t.add_column("class", footer="macro mean", no_wrap=True)
    for name, footer in columns:
        t.add_column(name, footer=footer, justify="right", no_wrap=True)
    for i, c in enumerate(scores):
        row = [f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
               str(c["support"])]
        if multilabel:
            (tn, fp), (fn, tp) = ev["class_confusion"][i]
            row += [f"{c['ap']:.3f}" if c.get("ap") is not None else "-",
                    str(tn), str(fp), str(fn), str(tp)]
        t.add_row(escape(c["class"]), *row)
    out.print(t)
    matrix = ev.get("confusion_matrix")
    if matrix:
        names = ev["class_names"]
        for part in fitted_tables(
                f"run {short}: confusion matrix (rows: true class, columns: predicted)",
                [("true \\ predicted", names)],
                [(name, [str(row[j]) for row in matrix]) for j, name in enumerate(names)],
                out.width):
            out.print(part)
        total = sum(map(sum, matrix))
        right = sum(matrix[i][i] for i in range(len(matrix)))
        if total:
            out.print(f"accuracy {right / total:.4f} ({right} of {total} test samples)")


@runs_app.command("embeddings")
def runs_embeddings(run: RunArg,
                    split: Annotated[str, typer.Option(
                        "--split", help="train, val or test.")] = "test",
                    png: Annotated[Path | None, typer.Option(
                        "--png", dir_okay=False,
                        help="Also write the PCA scatter (coloured by class) here.")] = None,
                    url: Url = DEFAULT_URL, api_key: ApiKey = None,
                    as_json: AsJson = False) -> None:
    """An autoencoder run's latent means of a split: per class, how many rows and
    where their PCA centroid lies; --json for every row's mean and projection."""
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        with err.status("encoding the split…"):
            emb = mx.embeddings(run_id, split)
            picture = mx.embeddings_png(run_id, split) if png is not None else None
    if png is not None and picture is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(picture)
    if as_json:
        return print_json(emb)
    shares = emb["explained_variance"]
    t = Table(title=f"run {run_id[:8]}: {emb['n']} {emb['split']} rows in a "
                    f"{emb['latent_dim']}-d latent; PCA axes explain {shares[0]:.0%} + "
                    f"{shares[1]:.0%}")
    for name in ("class", "rows", "PC1 mean", "PC2 mean"):
        t.add_column(name, justify="left" if name == "class" else "right")
    for k, name in enumerate(emb["class_names"]):
        points = [p for p, label in zip(emb["pca"], emb["labels"], strict=True) if label == k]
        if points:
            t.add_row(escape(name), str(len(points)),
                      f"{sum(p[0] for p in points) / len(points):.3f}",
                      f"{sum(p[1] for p in points) / len(points):.3f}")
    out.print(t)
    if png is not None:
        out.print(f"wrote {png}")


_PICTURE_SPLIT = Annotated[str, typer.Option("--split", help="train, val or test.")]
_PICTURE_ROWS = Annotated[int, typer.Option("--n", min=1, max=64,
                                            help="Rows of the split, one per sample.")]
_PICTURE_OUT = Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                            help="The PNG to write.")]


@runs_app.command("reconstructions")
def runs_reconstructions(run: RunArg, output: _PICTURE_OUT, split: _PICTURE_SPLIT = "test",
                         n: _PICTURE_ROWS = 8, url: Url = DEFAULT_URL,
                         api_key: ApiKey = None) -> None:
    """An autoencoder run's reconstructions as a PNG: per sample, input | reconstruction
    for each modality."""
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        with err.status("decoding…"):
            picture = mx.reconstructions_png(run_id, split, n)
    _write_picture(output, picture)


@runs_app.command("generate")
def runs_generate(run: RunArg, output: _PICTURE_OUT,
                  source: Annotated[str, typer.Option(
                      "--from", help="The modality the latent is inferred from.")],
                  target: Annotated[str, typer.Option(
                      "--to", help="The modality decoded from it.")],
                  split: _PICTURE_SPLIT = "test", n: _PICTURE_ROWS = 8,
                  url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Cross-modal generation as a PNG: per sample, --from | --to decoded from --from
    alone | --to as it is."""
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        with err.status("decoding…"):
            picture = mx.generate_png(run_id, source, target, split, n)
    _write_picture(output, picture)


def _write_picture(path: Path, picture: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(picture)
    out.print(f"wrote {path}")


@runs_app.command("checkpoint")
def runs_checkpoint(run: RunArg,
                    output: Annotated[Path | None, typer.Option(
                        "--output", "-o", dir_okay=False,
                        help="File to write (default RUN_ID.safetensors).")] = None,
                    url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Download a run's latest checkpoint (safetensors)."""
    with connect(url, api_key) as mx:
        run_id = resolve_run(mx, run)
        with err.status("downloading checkpoint…"):
            data = mx.download_checkpoint(run_id)
    path = output or Path(f"{run_id}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    out.print(f"wrote {path} ({len(data):,} bytes)")
