"""The client commands of ``mixlab`` run as processes against the real stack
(API + Celery worker on Postgres/Redis): exit codes, tables, files, errors."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Stack, free_port, wait_http

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path = ROOT
            ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app.cli ARGS``; never a traceback, whatever the outcome."""
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env if env is not None else {**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in done.stderr, done.stderr
    return done


def mixlab(url: str, *args: str, stdin: str | None = None, timeout: float = 120,
           columns: int | None = 200) -> subprocess.CompletedProcess[str]:
    """``python -m app.cli ARGS --url URL``, COLUMNS=``columns`` (None: unset, as
    when piped from a shell)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return run_cli(*args, "--url", url, stdin=stdin, timeout=timeout, env=env)


def ok(url: str, *args: str, stdin: str | None = None, columns: int | None = 200) -> str:
    done = mixlab(url, *args, stdin=stdin, columns=columns)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def digits_id(stack: Stack) -> str:
    out = ok(stack.base_url, "datasets", "add-builtin", "digits", "--label-noise", "0.4",
             "--seed", "0", "--name", "cli-digits")
    match = re.search(rf"registered ({UUID})\s+cli-digits: 1797 samples, 10 classes", out)
    assert match, out
    return match.group(1)


@pytest.fixture(scope="module")
def finished_run(stack: Stack, digits_id: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> dict[str, str]:
    """A two-epoch run submitted with ``--watch``; its ids and the command's output."""
    spec = tmp_path_factory.mktemp("spec") / "tiny.json"
    spec.write_text(json.dumps({"name": "cli-tiny", "dataset_id": digits_id,
                                "model": {"width": 8, "depth": 2},
                                "augmentation": {"method": "mixup", "alpha": 1.0},
                                "training": {"epochs": 2, "batch_size": 128}}))
    done = mixlab(stack.base_url, "experiments", "submit", str(spec), "--watch", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    experiment = re.search(rf"^experiment ({UUID})$", done.stdout, re.M)
    run = re.search(rf"^run ({UUID})$", done.stdout, re.M)
    assert experiment and run, done.stdout
    return {"experiment": experiment.group(1), "run": run.group(1), "stdout": done.stdout,
            "stderr": done.stderr}


def test_add_builtin_then_list_and_show(stack: Stack, digits_id: str) -> None:
    listing = ok(stack.base_url, "datasets", "list")
    row = next(line for line in listing.splitlines() if digits_id in line)
    assert "cli-digits" in row and "1797" in row and "train 1259" in row

    shown = ok(stack.base_url, "datasets", "show", digits_id)
    assert "cli-digits" in shown and "1×8×8" in shown and "uint8" in shown
    assert "504" in shown  # 40 % of 1,259 training labels flipped
    described = json.loads(ok(stack.base_url, "datasets", "show", digits_id, "--json"))
    assert described["id"] == digits_id and sum(described["split_sizes"].values()) == 1797
    assert len(described["classes"]) == 10


def test_upload_good_and_bad_npz_then_delete(stack: Stack, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "shapes.npz"
    np.savez(good, image=rng.integers(0, 256, (90, 8, 8), dtype=np.uint8),
             label=np.repeat(np.array(["a", "b", "c"]), 30))
    uploaded = json.loads(ok(stack.base_url, "datasets", "upload", str(good), "--name",
                             "cli-upload", "--json"))
    assert uploaded["name"] == "cli-upload" and uploaded["num_samples"] == 90
    assert [c["name"] for c in uploaded["classes"]] == ["a", "b", "c"]

    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((90, 64), dtype=np.uint8), label=np.zeros(90, dtype=np.int64))
    done = mixlab(stack.base_url, "datasets", "upload", str(bad))
    assert done.returncode == 1
    assert "error: 422" in done.stderr and "body.file.image:" in done.stderr, done.stderr

    assert "deleted" in ok(stack.base_url, "datasets", "delete", uploaded["id"])
    gone = mixlab(stack.base_url, "datasets", "show", uploaded["id"])
    assert gone.returncode == 1 and "error: 404" in gone.stderr


def test_create_waits_and_lists_why_a_preparation_failed(stack: Stack, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.unit.test_parquet import png

    bad = tmp_path / "bad.parquet"
    labels = ["a", "b"] * 15
    labels[3] = None  # type: ignore[call-overload]
    pq.write_table(pa.table({"img": [b"junk" if i % 2 else png(i) for i in range(30)],
                             "label": labels}), bad)
    done = mixlab(stack.base_url, "datasets", "create", "--file", str(bad), "--name", "cli-bad")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(rf"error: dataset {UUID} \(cli-bad\) failed to prepare: 16 problem",
                     done.stderr), done.stderr
    assert "  label: missing at row 3" in done.stderr
    assert "  img: unreadable image in 15 rows: 1, 3, 5" in done.stderr
    failed_id = re.search(rf"dataset ({UUID})", done.stderr).group(1)  # type: ignore[union-attr]
    shown = mixlab(stack.base_url, "datasets", "show", failed_id)
    assert "failed (16 problem(s))" in shown.stdout and "img: unreadable image" in shown.stderr
    listing = ok(stack.base_url, "datasets", "list")
    assert any(failed_id in line and "failed" in line for line in listing.splitlines())


def test_create_without_waiting_then_show(stack: Stack) -> None:
    out = ok(stack.base_url, "datasets", "create", "--builtin", "digits", "-o",
             "label_noise=0.1", "--name", "cli-nowait", "--no-wait")
    match = re.search(rf"registered ({UUID})\s+cli-nowait: preparing \((queued|\w+), \d+%\)",
                      out)
    assert match, out
    from app.client import MixlabClient

    with MixlabClient(stack.base_url) as mx:
        assert mx.wait_for_dataset(match.group(1), timeout=120)["status"] == "ready"
    shown = ok(stack.base_url, "datasets", "show", match.group(1))
    assert "ready" in shown and "126" in shown  # 10 % of 1,259 training labels flipped
    usage = mixlab(stack.base_url, "datasets", "create", "--builtin", "digits", "--uri",
                   "s3://b/k.parquet")
    assert usage.returncode == 2 and "exactly one of" in usage.stderr
    refused = mixlab(stack.base_url, "datasets", "create", "--uri", "file:///etc/passwd.npz")
    assert refused.returncode == 1 and "body.source.uri:" in refused.stderr


def test_preview_writes_png_and_table(stack: Stack, digits_id: str, tmp_path: Path) -> None:
    png = tmp_path / "out" / "preview.png"
    out = ok(stack.base_url, "preview", digits_id, "--method", "cutmix", "--alpha", "1.0",
             "--seed", "0", "-n", "4", "--output", str(png))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    rows = [line for line in out.splitlines() if re.match(r"^│ \d ", line)]
    assert len(rows) == 4, out
    assert all(re.search(r"#\d+ \(\d\).*#\d+ \(\d\).*\b[01]\.\d{3}\b", r) for r in rows), out

    bad = mixlab(stack.base_url, "preview", digits_id, "--alpha", "-1", "-o",
                 str(tmp_path / "x.png"))
    assert bad.returncode == 1 and "body.alpha:" in bad.stderr


def test_preview_of_a_multimodal_dataset(stack: Stack, tmp_path: Path) -> None:
    from app.client import MixlabClient

    with MixlabClient(stack.base_url) as mx:
        synth = mx.create_builtin_dataset("synthetic", name="mm", num_samples=200)["id"]
        assert mx.wait_for_dataset(synth, timeout=120)["status"] == "ready"
    png = tmp_path / "audio.png"
    ok(stack.base_url, "preview", synth, "--method", "cross_modal", "--modality", "audio",
       "--spec", '{"ops": {"audio": "specmix", "text": "token_cutmix"}}', "-n", "3",
       "-o", str(png))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    bad = mixlab(stack.base_url, "preview", synth, "--modality", "smell", "-o", str(png))
    assert bad.returncode == 1 and "--modality" in bad.stderr
    wrong = mixlab(stack.base_url, "preview", synth, "--method", "cross_modal", "--spec",
                   '{"ops": {"image": "token_cutmix"}}', "-o", str(png))
    assert wrong.returncode == 1 and "body.ops.image" in wrong.stderr


def test_submit_watch_shows_final_metrics(finished_run: dict[str, str]) -> None:
    assert "test_acc" in finished_run["stdout"] and "val_acc" in finished_run["stdout"]
    assert "succeeded" in finished_run["stderr"]  # the progress bar's last state


def test_experiments_list_and_show(stack: Stack, finished_run: dict[str, str]) -> None:
    assert finished_run["experiment"] in ok(stack.base_url, "experiments", "list")
    shown = ok(stack.base_url, "experiments", "show", finished_run["experiment"])
    assert finished_run["run"] in shown and "succeeded" in shown and "width=8" in shown


def test_runs_show_metrics_checkpoint(stack: Stack, finished_run: dict[str, str],
                                      tmp_path: Path) -> None:
    run_id = finished_run["run"]
    shown = ok(stack.base_url, "runs", "show", run_id)
    assert "succeeded" in shown and "test_acc" in shown

    metrics = ok(stack.base_url, "runs", "metrics", run_id, "--key", "val_acc")
    rows = [line for line in metrics.splitlines() if re.match(r"^│ [12] +│ \d+ +│ +0\.\d+", line)]
    assert len(rows) == 2 and "val_acc" in metrics and "train_loss" not in metrics, metrics
    history = json.loads(ok(stack.base_url, "runs", "metrics", run_id, "--json"))
    assert {"train_loss", "val_acc", "test_acc"} <= set(history)

    path = tmp_path / "model.safetensors"
    ok(stack.base_url, "runs", "checkpoint", run_id, "-o", str(path))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert json.loads(path.read_bytes()[8:8 + header_len])  # a safetensors header

    assert json.loads(ok(stack.base_url, "runs", "watch", run_id, "--json"))["status"] == (
        "succeeded")


def test_cancel_finished_run_is_409(stack: Stack, finished_run: dict[str, str]) -> None:
    done = mixlab(stack.base_url, "runs", "cancel", finished_run["run"])
    assert done.returncode == 1
    assert re.search(r"^error: 409 .*already succeeded", done.stderr, re.M), done.stderr


def test_invalid_spec_from_stdin_names_fields(stack: Stack) -> None:
    spec = json.dumps({"dataset_id": str(uuid.uuid4()), "augmentation": {"alpha": -1}})
    done = mixlab(stack.base_url, "experiments", "submit", "-", stdin=spec)
    assert done.returncode == 1 and "error: 422" in done.stderr
    assert "body.augmentation.alpha:" in done.stderr, done.stderr
    not_json = mixlab(stack.base_url, "experiments", "submit", "-", stdin="{nope")
    assert not_json.returncode == 1 and "not valid JSON" in not_json.stderr


def test_unknown_run_is_404(stack: Stack) -> None:
    done = mixlab(stack.base_url, "runs", "show", str(uuid.uuid4()))
    assert done.returncode == 1 and "error: 404" in done.stderr and "not found" in done.stderr


def test_connection_refused_exits_2() -> None:
    done = mixlab(f"http://127.0.0.1:{free_port()}", "datasets", "list")
    assert done.returncode == 2
    assert "is the API running? mixlab up" in done.stderr and done.stdout == ""


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m app.cli admin ARGS`` on the tests' database; never a traceback."""
    return run_cli("admin", *args)


def test_admin_bootstraps_a_key_the_client_commands_use_until_revoked(stack: Stack) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = admin("create-project", name, "--limit", "queued_runs=5")
    assert created.returncode == 0 and f"created project {name}" in created.stdout
    taken = admin("create-project", name)
    assert taken.returncode == 1 and "exists" in taken.stderr
    made = admin("create-key", "--project", name, "--scope", "read", "--name", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()  # the key alone on stdout: $(mixlab admin create-key ...)
    assert re.fullmatch(r"mxl_[0-9a-f]{8}_[\w-]{43}", key), made.stdout
    assert "shown only now" in made.stderr
    listed = admin("list-keys", "--project", name)
    row = next(line for line in listed.stdout.splitlines() if key[:12] in line)
    assert key not in listed.stdout and "read" in row and " ci " in row
    key_id = re.search(UUID, row).group(0)  # type: ignore[union-attr]

    # the new project sees none of the tests' project, and may only read
    listing = ok(stack.base_url, "datasets", "list", "--api-key", key)
    assert "datasets (0 of 0)" in listing
    write = mixlab(stack.base_url, "datasets", "delete", str(uuid.uuid4()), "--api-key", key)
    assert write.returncode == 1 and "error: 403" in write.stderr

    revoked = admin("revoke-key", key_id[:8])  # a start of the id will do
    assert revoked.returncode == 0 and key[:12] in revoked.stdout
    refused = mixlab(stack.base_url, "datasets", "list", "--api-key", key)
    assert refused.returncode == 1 and "error: 401 invalid or revoked API key" in refused.stderr
    assert "--api-key or MIXLAB_API_KEY" in refused.stderr
    assert admin("revoke-key", str(uuid.uuid4())).returncode == 1
    assert admin("revoke-key", uuid.uuid4().hex[:16]).returncode == 1  # matches no key
    not_an_id = admin("revoke-key", "key-one")
    assert not_an_id.returncode == 2 and "not a key id" in not_an_id.stderr
    assert admin("create-key", "--project", "no-such-project").returncode == 1


# ── the first hour (issue 10) ─────────────────────────────────────────────────

def test_add_builtin_sends_only_the_options_given(stack: Stack) -> None:
    # synthetic takes no label_noise: the command must not send one it was not given
    made = json.loads(ok(stack.base_url, "datasets", "add-builtin", "synthetic", "--name",
                         "cli-mm", "--json"))
    assert made["status"] == "ready" and made["num_samples"] == 1200, made
    assert "label_noise" not in json.dumps(made["source"])
    assert {m["kind"] for m in made["modalities"]} == {"image", "text", "audio", "tabular"}
    small = json.loads(ok(stack.base_url, "datasets", "add-builtin", "synthetic", "--seed", "3",
                          "-o", "num_samples=200", "-o", 'modalities=["image", "tabular"]',
                          "--json"))
    assert small["num_samples"] == 200 and len(small["modalities"]) == 2, small
    # an option the built-in does not take is the user's: the API names it
    wrong = mixlab(stack.base_url, "datasets", "add-builtin", "synthetic", "--label-noise",
                   "0.2")
    assert wrong.returncode == 1 and "label_noise" in wrong.stderr, wrong.stderr


def test_ids_are_accepted_by_any_unique_start(stack: Stack, digits_id: str,
                                              finished_run: dict[str, str],
                                              tmp_path: Path) -> None:
    run, experiment = finished_run["run"], finished_run["experiment"]
    assert re.search(rf"│ id +│ {run} ", ok(stack.base_url, "runs", "show", run[:8]))
    assert json.loads(ok(stack.base_url, "runs", "show", run[:5].upper(), "--json"))["id"] == run
    assert json.loads(ok(stack.base_url, "runs", "watch", run[:8], "--json"))["id"] == run
    assert "val_acc" in ok(stack.base_url, "runs", "metrics", run[:8], "--key", "val_acc")
    path = tmp_path / "model.safetensors"
    ok(stack.base_url, "runs", "checkpoint", run[:8], "-o", str(path))
    assert path.stat().st_size > 0
    assert run in ok(stack.base_url, "experiments", "show", experiment[:8])
    assert digits_id in ok(stack.base_url, "datasets", "show", digits_id[:8])
    predicted = json.loads(ok(stack.base_url, "predict", run[:8], "--dataset", digits_id[:8],
                              "--indices", "0-2", "--json"))
    assert [p["index"] for p in predicted["predictions"]] == [0, 1, 2]
    png = tmp_path / "p.png"
    ok(stack.base_url, "preview", digits_id[:8], "-n", "2", "-o", str(png))

    nothing = mixlab(stack.base_url, "runs", "show", uuid.uuid4().hex[:16])
    assert nothing.returncode == 1 and "no run id starts with" in nothing.stderr
    assert "mixlab runs list" in nothing.stderr
    bad = mixlab(stack.base_url, "experiments", "show", "cli-tiny")
    assert bad.returncode == 2 and "'cli-tiny' is not an experiment id" in bad.stderr
    assert "hexadecimal" in bad.stderr, bad.stderr


def test_runs_list_with_filters(stack: Stack, finished_run: dict[str, str]) -> None:
    run, experiment = finished_run["run"], finished_run["experiment"]
    listed = ok(stack.base_url, "runs", "list", "--experiment", experiment[:8])
    assert f"runs (experiment {experiment[:8]}): 1 of 1" in listed
    row = next(line for line in listed.splitlines() if run in line)
    assert "succeeded" in row and "2/2" in row and "cli-tiny" in row and "mixup" in row
    page = json.loads(ok(stack.base_url, "runs", "list", "--status", "succeeded", "--limit", "1",
                         "--json"))
    assert len(page["items"]) == 1 and page["total"] >= 1
    assert all(r["status"] == "succeeded" for r in page["items"])
    none = json.loads(ok(stack.base_url, "runs", "list", "--status", "running", "--experiment",
                         experiment, "--json"))
    assert none["items"] == [] and none["total"] == 0
    bogus = mixlab(stack.base_url, "runs", "list", "--status", "done")
    assert bogus.returncode == 2 and "--status" in bogus.stderr


def test_runs_metrics_shows_every_key_asked_and_wide_history_readably(
        stack: Stack, finished_run: dict[str, str]) -> None:
    run = finished_run["run"]
    both = ok(stack.base_url, "runs", "metrics", run[:8], "--key", "val_acc", "--key",
              "val_loss")
    header = next(line for line in both.splitlines() if "val_acc" in line)
    assert "val_loss" in header, both  # one table, a column each
    assert len([line for line in both.splitlines() if re.match(r"^│ [12] ", line)]) == 2
    missing = mixlab(stack.base_url, "runs", "metrics", run[:8], "--key", "val_acc", "--key",
                     "val_nope")
    assert missing.returncode == 0 and "no metric val_nope recorded" in missing.stderr
    assert "val_acc" in missing.stdout

    history = json.loads(ok(stack.base_url, "runs", "metrics", run, "--json"))
    assert len(history) > 10
    for columns in (80, None):  # a narrow terminal, and piped with COLUMNS unset
        shown = ok(stack.base_url, "runs", "metrics", run[:8], columns=columns)
        assert "…" not in shown, shown
        assert all(len(line) <= (columns or 160) for line in shown.splitlines())
        for key in history:
            assert re.search(rf"[│ ]{re.escape(key)}[│ ]", shown), (key, shown)
        assert re.search(r"│ test_acc +│ +0\.\d+ +│ +2 +│", shown), shown


def test_runs_evaluation_prints_scores_and_confusion_matrix(
        stack: Stack, finished_run: dict[str, str]) -> None:
    run = finished_run["run"]
    shown = ok(stack.base_url, "runs", "evaluation", run[:8])
    assert "precision" in shown and "recall" in shown and "F1" in shown and "support" in shown
    score = r"[01]\.\d{3}"
    scores = [line for line in shown.splitlines()
              if re.match(rf"^│ \d +│ +{score} +│ +{score} +│ +{score} +│ +\d+ +│", line)]
    assert len(scores) == 10, shown
    assert "confusion matrix (rows: true class, columns: predicted)" in shown
    matrix = [line for line in shown.splitlines() if re.match(r"^│ \d +│( +\d+ +│){10}$", line)]
    assert len(matrix) == 10, shown
    support = sum(int(line.split("│")[5]) for line in scores)
    assert re.search(rf"accuracy 0\.\d{{4}} \(\d+ of {support} test samples\)", shown)
    ev = json.loads(ok(stack.base_url, "runs", "evaluation", run, "--json"))
    assert len(ev["confusion_matrix"]) == 10


def test_experiments_delete_asks_then_deletes_with_runs(stack: Stack, digits_id: str) -> None:
    spec = json.dumps({"name": "cli-doomed", "dataset_id": digits_id,
                       "model": {"width": 8, "depth": 2}, "training": {"epochs": 1}})
    created = json.loads(ok(stack.base_url, "experiments", "submit", "-", "--json",
                            stdin=spec))
    experiment, run = created["experiment_id"], created["run_ids"][0]
    unasked = mixlab(stack.base_url, "experiments", "delete", experiment[:8], stdin="")
    assert unasked.returncode == 2 and "without --yes" in unasked.stderr
    assert run in ok(stack.base_url, "experiments", "show", experiment)  # still there
    deleted = ok(stack.base_url, "experiments", "delete", experiment[:8], "--yes")
    assert f"deleted experiment {experiment} (cli-doomed) with its 1 run(s)" in deleted
    gone = mixlab(stack.base_url, "experiments", "show", experiment)
    assert gone.returncode == 1 and "error: 404" in gone.stderr
    assert mixlab(stack.base_url, "runs", "show", run).returncode == 1
    again = mixlab(stack.base_url, "experiments", "delete", experiment[:8], "--yes")
    assert again.returncode == 1 and "no experiment id starts with" in again.stderr


def test_migrate_upgrades_downgrades_and_refuses_unknown_revisions() -> None:
    from sqlalchemy import create_engine, inspect, text

    from app.db.migrate import revisions
    from tests.conftest import PG_URL_BASE, create_database, drop_database

    known = revisions()
    head = known[-1]
    name = f"mixlab_cli_mig_{uuid.uuid4().hex[:10]}"
    create_database(name)
    url = f"{PG_URL_BASE}/{name}"
    env = {**os.environ, "MIXLAB_DATABASE_URL": url, "COLUMNS": "200"}
    engine = create_engine(url)

    def at() -> str | None:
        with engine.connect() as conn:
            if "alembic_version" not in inspect(conn).get_table_names():
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def migrate(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("migrate", *args, env=env)

    try:
        up = migrate()
        assert up.returncode == 0 and at() == head
        assert f"database upgraded from base (empty) to {head} (head)" in up.stderr, up.stderr
        down = migrate("--revision", "0002")
        assert down.returncode == 0 and at() == "0002"
        assert f"database downgraded from {head} (head) to 0002" in down.stderr, down.stderr
        with engine.connect() as conn:  # 0003 made the projects table
            assert "projects" not in inspect(conn).get_table_names()
        same = migrate("--revision", "0002")
        assert same.returncode == 0 and "database already at 0002: nothing to do" in same.stderr
        unknown = migrate("--revision", "0099")
        assert unknown.returncode == 2 and at() == "0002"
        assert "unknown revision '0099'" in unknown.stderr and f"{head} (head)" in unknown.stderr
        again = migrate("--revision", "head")
        assert again.returncode == 0 and at() == head
        assert f"database upgraded from 0002 to {head} (head)" in again.stderr
        assert migrate("--revision", "base").returncode == 0 and at() is None
    finally:
        engine.dispose()
        drop_database(name)


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXLAB_")}
    env["MIXLAB_DATA_DIR"] = str(tmp_path / "state")
    env["COLUMNS"] = "200"
    return env


def test_up_on_a_busy_port_fails_before_announcing(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = run_cli("up", "--port", str(port), env=_embedded_env(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "API on" not in done.stdout + done.stderr


def test_up_warns_once_that_authentication_is_off(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port)],
                            env=_embedded_env(tmp_path), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}", proc, log, timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert f"API on http://127.0.0.1:{port}" in text
    assert text.count("authentication is OFF") == 1, text


def test_demo_keeps_out_of_a_folder_it_did_not_make(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    mine = tmp_path / "state" / "demo"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    done = run_cli("demo", "--port", str(free_port()), "--output", str(tmp_path / "out"),
                   env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{mine} exists and the demo did not make it" in done.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not (tmp_path / ".mixlab-demo").exists()

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = run_cli("demo", "--port", str(held.getsockname()[1]), env=env, cwd=tmp_path)
    assert busy.returncode == 2 and "cannot listen on" in busy.stderr
