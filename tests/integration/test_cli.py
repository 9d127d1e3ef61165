"""The client commands of ``mixlab`` run as processes against the real stack
(API + Celery worker on Postgres/Redis): exit codes, tables, files, errors."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Stack, free_port

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ROOT = Path(__file__).resolve().parents[2]


def mixlab(url: str, *args: str, stdin: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app.cli ARGS --url URL``; never a traceback, whatever the outcome."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "app.cli", *args, "--url", url],
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok(url: str, *args: str, stdin: str | None = None) -> str:
    done = mixlab(url, *args, stdin=stdin)
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
    """A one-epoch run submitted with ``--watch``; its ids and the command's output."""
    spec = tmp_path_factory.mktemp("spec") / "tiny.json"
    spec.write_text(json.dumps({"name": "cli-tiny", "dataset_id": digits_id,
                                "model": {"width": 8, "depth": 2},
                                "augmentation": {"method": "mixup", "alpha": 1.0},
                                "training": {"epochs": 1, "batch_size": 128}}))
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
    rows = [line for line in metrics.splitlines() if re.match(r"^│ 1 +│ \d+ +│ 0\.\d+", line)]
    assert len(rows) == 1 and "val_acc" in metrics and "train_loss" not in metrics, metrics
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
    done = subprocess.run([sys.executable, "-m", "app.cli", "admin", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in done.stderr, done.stderr
    return done


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

    revoked = admin("revoke-key", key_id)
    assert revoked.returncode == 0 and key[:12] in revoked.stdout
    refused = mixlab(stack.base_url, "datasets", "list", "--api-key", key)
    assert refused.returncode == 1 and "error: 401 invalid or revoked API key" in refused.stderr
    assert "--api-key or MIXLAB_API_KEY" in refused.stderr
    assert admin("revoke-key", str(uuid.uuid4())).returncode == 1
    assert admin("create-key", "--project", "no-such-project").returncode == 1
