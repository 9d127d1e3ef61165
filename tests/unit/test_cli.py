"""The command line without a server: help texts, id prefixes, table layout,
the demo's folder and the port check."""

import re
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from app.cli import cli, port_problem
from app.cli_client import fitted_tables, match_id, metric_history_tables, resolve_id
from app.demo import MARKER, DemoError, demo_dir, fresh_folder

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*path, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(cli))


def test_every_command_is_covered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"runs list", "runs evaluation", "experiments delete", "migrate", "demo",
            "admin revoke-key", "predict", "sweep submit", "sweep watch", "sweep summary",
            "sweep cancel", "sweep list", "runs compare"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "mixlab")
def test_help_is_plain_text(path: tuple[str, ...]) -> None:
    """No RST backticks, no <bool> metavars, and no paragraph broken before the
    terminal's edge: at 1,000 columns every paragraph and every option's help is
    one line."""
    done = CliRunner().invoke(cli, [*path, "--help"], env={"COLUMNS": "1000"})
    assert done.exit_code == 0, done.output
    text = ANSI.sub("", done.output)
    assert "``" not in text and "<bool>" not in text and "\b" not in text, text
    lines = text.splitlines()
    usage = next(i for i, line in enumerate(lines) if "Usage:" in line)
    panel = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    description = [line.strip() for line in lines[usage + 1:panel] if line.strip()]
    assert description, text
    for line in description:  # whole paragraphs end a sentence
        assert re.search(r"[.:)!?]$", line), f"{' '.join(path)}: broken paragraph {line!r}"
    for line in lines[panel:]:
        if not line.startswith("│"):
            continue
        row = line.strip("│").strip()
        # a row starts with its option, argument (maybe after the required star) or
        # command; a row that starts with help text continues a broken one
        assert re.match(r"(-|\*|[A-Z]|[a-z][\w-]*\s{2,}\S)", row), \
            f"{' '.join(path)}: help continued on its own row: {row!r}"


# ── id prefixes ───────────────────────────────────────────────────────────────

IDS = ["6adc50ba-1111-4000-8000-000000000001", "6adc50bb-2222-4000-8000-000000000002",
       "6adc50ba-3333-4000-8000-000000000003", "9f000000-0000-4000-8000-000000000004"]


def _items() -> list[dict[str, Any]]:
    return [{"id": i, "name": f"exp-{n}"} for n, i in enumerate(IDS)]


def _match(text: str) -> str:
    return match_id(text, _items(), "experiment", lambda e: e["name"],
                    "mixlab experiments list")


def test_a_unique_prefix_resolves_with_or_without_dashes() -> None:
    assert _match("9") == IDS[3]
    assert _match("6ADC50BB") == IDS[1]
    assert _match("6adc50ba-11") == IDS[0] == _match("6adc50ba11")


def test_an_ambiguous_prefix_lists_its_candidates(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        _match("6adc50ba")
    assert exited.value.exit_code == 2
    stderr = capsys.readouterr().err
    assert "'6adc50ba' is ambiguous" in stderr and "2 experiments' ids" in stderr
    assert f"{IDS[0]}  exp-0" in stderr and f"{IDS[2]}  exp-2" in stderr
    assert IDS[1] not in stderr


def test_a_prefix_that_matches_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        _match("abc")
    assert exited.value.exit_code == 1
    assert "no experiment id starts with 'abc' (mixlab experiments list lists them)" in (
        capsys.readouterr().err)


def test_resolve_pages_through_the_list_and_skips_it_for_a_full_id(
        capsys: pytest.CaptureFixture[str]) -> None:
    many = [{"id": str(uuid.UUID(int=i)), "status": "queued"} for i in range(1, 1201)]
    many.append({"id": "fedcba98-0000-4000-8000-000000000000", "status": "running"})
    calls: list[tuple[int, int]] = []

    def list_page(limit: int, offset: int) -> dict[str, Any]:
        calls.append((limit, offset))
        return {"items": many[offset:offset + limit], "total": len(many)}

    assert resolve_id("fedc", "run", list_page, str, "mixlab runs list") == many[-1]["id"]
    assert calls == [(500, 0), (500, 500), (500, 1000)]
    calls.clear()
    full = str(uuid.uuid4())
    assert resolve_id(full.upper(), "run", list_page, str, "mixlab runs list") == full
    assert calls == []  # the API answers 404 for a full id it does not know
    with pytest.raises(typer.Exit) as exited:
        resolve_id("run-6a", "run", list_page, str, "mixlab runs list")
    assert exited.value.exit_code == 2 and "not a run id" in capsys.readouterr().err


# ── tables that stay readable however wide ────────────────────────────────────

def _render(tables: list[Any], width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for t in tables:
        console.print(t)
    return console.export_text()


def test_wide_metric_history_is_split_into_tables_that_fit() -> None:
    per_epoch = [f"val_metric_number_{i}" for i in range(12)] + ["train_loss", "val_acc"]
    history: dict[str, list[dict[str, Any]]] = {
        k: [{"epoch": e, "step": 10 * e, "value": 0.123456 * e} for e in (1, 2, 3)]
        for k in per_epoch}
    history["lr"] = [{"epoch": 1 + s // 10, "step": s, "value": 0.1} for s in range(1, 31)]
    for k in ("test_acc", "test_ece", "temperature"):
        history[k] = [{"epoch": 3, "step": 30, "value": 0.5}]
    text = _render(metric_history_tables(history, sorted(history), "run x metrics", 80), 80)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for key in history:
        assert re.search(rf"\b{key}\b", text), key
    assert "run x metrics by step" in text and "run x metrics by epoch (1/" in text
    assert "run x metrics recorded once" in text
    # recorded once: a row per key, not a column each
    assert re.search(r"│ temperature +│ +0\.5 +│ +3 +│ +30 +│", text), text


def test_fitted_tables_keep_row_labels_in_every_part() -> None:
    names = [f"class-{i:02d}" for i in range(30)]
    tables = fitted_tables("confusion", [("true", names)],
                           [(n, [str(j) for j in range(30)]) for n in names], 100)
    assert len(tables) > 1
    text = _render(tables, 100)
    assert "…" not in text and text.count("class-29 │") == len(tables)


# ── the demo's folder ─────────────────────────────────────────────────────────

def test_demo_folder_follows_the_data_dir() -> None:
    assert demo_dir({"MIXLAB_DATA_DIR": "/srv/mixlab"}) == Path("/srv/mixlab/demo")
    assert demo_dir({}) == Path(".mixlab-demo")


def test_the_demo_empties_only_a_folder_it_made(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    fresh_folder(folder)  # made: with the marker
    assert (folder / MARKER).is_file()
    (folder / "stack.log").write_text("old")
    fresh_folder(folder)  # its own: emptied
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(DemoError, match="did not make it"):
        fresh_folder(mine)
    assert (mine / "thesis.tex").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    fresh_folder(empty)  # an empty folder is taken
    assert (empty / MARKER).is_file()


def test_a_demo_folder_from_before_the_marker_is_still_recognised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = demo_dir({})
    (old / "broker").mkdir(parents=True)
    for name in ("stack.log", "worker.log", "mixlab.db"):
        (old / name).write_text("")
    fresh_folder(old)  # what earlier demos left in ./.mixlab-demo: theirs to empty
    assert sorted(p.name for p in old.iterdir()) == [MARKER]
    (old / MARKER).unlink()
    (old / "stack.log").write_text("")
    (old / "results.csv").write_text("mine")
    with pytest.raises(DemoError):
        fresh_folder(old)
    assert (old / "results.csv").read_text() == "mine"


def test_port_problem_names_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        problem = port_problem("127.0.0.1", port)
        assert problem and f"127.0.0.1:{port}" in problem and "--port" in problem
    assert port_problem("127.0.0.1", port) is None
