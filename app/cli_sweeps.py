"""``mixlab sweep …`` and ``mixlab runs compare``: the client commands of sweeps and
of comparing runs (registered by ``app.cli_client.register``)."""

import json
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli_client import (
    DEFAULT_URL,
    POLL_S,
    ApiKey,
    App,
    AsJson,
    Limit,
    Offset,
    Url,
    connect,
    err,
    fail,
    fitted_tables,
    metrics_tables,
    number,
    out,
    print_json,
    resolve_id,
    resolve_run,
    runs_app,
    table,
    when,
)
from app.client import MixlabClient

SweepArg = Annotated[str, typer.Argument(
    metavar="SWEEP", show_default=False, help="A sweep's id, or a unique start of it.")]
Metric = Annotated[str, typer.Option("--metric", "-m",
                                     help="The metric the summary averages over seeds.")]

sweep_app = App(help="Submit, follow, summarise, cancel and list sweeps.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    cli.add_typer(sweep_app, name="sweep")


def resolve_sweep(mx: MixlabClient, text: str) -> str:
    return resolve_id(
        text, "sweep", lambda limit, offset: mx.sweeps(limit=limit, offset=offset),
        lambda s: f"{s['name']}, {s['total']} runs, created {when(s['created_at'])}",
        "mixlab sweep list")


def _config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in config.items()) or "(base)"


def _counts(sweep: dict[str, Any]) -> str:
    return " · ".join(f"{n} {status}" for status, n in sorted(sweep["counts"].items()))


def watch_sweep(mx: MixlabClient, sweep_id: str) -> dict[str, Any]:
    """One progress bar for the whole sweep (runs ended of all), on stderr, until
    every run ended."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("runs ended · {task.fields[counts]}"), TimeElapsedColumn())
    with Progress(*columns, console=err) as bars:
        task = bars.add_task(f"sweep {sweep_id[:8]}", total=None, counts="…")
        while True:
            sweep = mx.sweep(sweep_id)
            bars.update(task, total=sweep["total"], completed=sweep["finished"],
                        counts=_counts(sweep))
            if sweep["done"]:
                return sweep
            time.sleep(POLL_S)


def print_summary(mx: MixlabClient, sweep_id: str, metric: str, as_json: bool) -> None:
    summary = mx.sweep_summary(sweep_id, metric=metric)
    if as_json:
        print_json(summary)
        return
    best = "highest" if summary["order"] == "desc" else "lowest"
    t = table("configuration", "n", "runs", f"mean {metric}", "std", "min", "max", "best run",
              title=f"sweep {sweep_id[:8]}: {metric} over seeds ({best} mean first)")
    t.columns[0].no_wrap = True
    for row in summary["rows"]:
        cells = [number(row[k]) if row[k] is not None else "-"
                 for k in ("mean", "std", "min", "max")]
        t.add_row(escape(_config(row["config"])), str(row["n"]), str(row["runs"]), *cells,
                  (row["best_run_id"] or "-")[:8])
    out.print(t)


@sweep_app.command("submit")
def sweep_submit(
        spec: Annotated[typer.FileText, typer.Argument(
            metavar="FILE", help="Sweep (JSON: name, base, grid and/or random; - for "
                                 "stdin).")],
        watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow the sweep until "
                                            "every run ended, then print its summary.")] = False,
        metric: Metric = "test_acc",
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Create a sweep: one experiment and queued run per point."""
    try:
        body = json.loads(spec.read())
    except json.JSONDecodeError as exc:
        raise fail(f"{getattr(spec, 'name', 'FILE')} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise fail("the sweep must be a JSON object")
    with connect(url, api_key) as mx:
        created = mx.create_sweep(body)
        sweep_id = str(created["sweep_id"])
        if as_json:
            print_json(created)
        else:
            out.print(f"sweep {sweep_id}: {len(created['run_ids'])} runs queued")
        if not watch:
            return
        try:
            sweep = watch_sweep(mx, sweep_id)
        except KeyboardInterrupt:
            err.print(f"stopped watching; the sweep goes on (mixlab sweep cancel {sweep_id} "
                      "stops it)")
            raise typer.Exit(130) from None
        print_summary(mx, sweep_id, metric, as_json)
    raise typer.Exit(0 if sweep["counts"].get("succeeded", 0) == sweep["total"] else 1)


@sweep_app.command("watch")
def sweep_watch(sweep: SweepArg, metric: Metric = "test_acc", url: Url = DEFAULT_URL,
                api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Follow a sweep until every run ended, then print its summary."""
    with connect(url, api_key) as mx:
        sweep_id = resolve_sweep(mx, sweep)
        try:
            final = watch_sweep(mx, sweep_id)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        print_summary(mx, sweep_id, metric, as_json)
    raise typer.Exit(0 if final["counts"].get("succeeded", 0) == final["total"] else 1)


@sweep_app.command("summary")
def sweep_summary(sweep: SweepArg, metric: Metric = "test_acc", url: Url = DEFAULT_URL,
                  api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """One row per configuration: mean, std, min, max of a metric over seeds."""
    with connect(url, api_key) as mx:
        print_summary(mx, resolve_sweep(mx, sweep), metric, as_json)


@sweep_app.command("cancel")
def sweep_cancel(sweep: SweepArg, url: Url = DEFAULT_URL, api_key: ApiKey = None,
                 as_json: AsJson = False) -> None:
    """Cancel a sweep's live runs (queued ones at once, running ones within a step)."""
    with connect(url, api_key) as mx:
        reply = mx.cancel_sweep(resolve_sweep(mx, sweep))
    if as_json:
        return print_json(reply)
    out.print(f"sweep {reply['id']}: {_counts(reply)}")


@sweep_app.command("list")
def sweep_list(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False,
               limit: Limit = 50, offset: Offset = 0) -> None:
    """List sweeps, newest first."""
    with connect(url, api_key) as mx:
        page = mx.sweeps(limit=limit, offset=offset)
    if as_json:
        return print_json(page)
    t = table("id", "name", "runs", "ended", "status", "created",
              title=f"sweeps ({len(page['items'])} of {page['total']})")
    for s in page["items"]:
        t.add_row(s["id"][:8], escape(s["name"]), str(s["total"]), f"{s['progress']:.0%}",
                  escape(_counts(s)), when(s["created_at"]))
    out.print(t)


@runs_app.command("compare")
def runs_compare(
        runs: Annotated[list[str], typer.Argument(
            metavar="RUN…", show_default=False, help="2 to 20 runs (ids or unique starts).")],
        url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Runs side by side: the spec fields that differ, and their final metrics."""
    if not 2 <= len(runs) <= 20:
        raise fail("give 2 to 20 runs", code=2)
    with connect(url, api_key) as mx:
        reply = mx.compare_runs([resolve_run(mx, r) for r in runs])
    if as_json:
        return print_json(reply)
    ids = [r["id"] for r in reply["runs"]]
    fields = sorted(reply["differs"])
    if fields:
        for t in fitted_tables("spec fields that differ", [("field", fields)],
                               [(rid[:8], [json.dumps(reply["differs"][f][rid])
                                           for f in fields]) for rid in ids], out.width):
            out.print(t)
    else:
        out.print("the runs' specs are the same")
    for t in metrics_tables(reply["runs"]):
        out.print(t)
