"""``mixlab demo``: the whole service on noisy digits, ERM against mixup.

Starts the embedded stack in a fresh folder, registers scikit-learn's digits
with 40 % of training labels flipped, trains the default CNN with the default
recipe without mixing and with mixup at α = 1, shows progress while polling
over HTTP, prints test accuracy and calibration, saves preview PNGs (drawn
with the same α) and stops everything.

The folder is ``$MIXLAB_DATA_DIR/demo`` when MIXLAB_DATA_DIR is set, else
``./.mixlab-demo``. The demo writes a marker file into the folder it makes, and
empties a folder at the next run only if it carries that marker: a folder of
the user's (not empty, no marker) is refused, never deleted.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from app.cli import port_problem, stop_process_group
from app.cli_client import make_console, watch_runs
from app.client import MixlabClient, MixlabError, wait_until_ready

console = make_console()
errors = make_console(stderr=True)
DEFAULT_DIR = Path(".mixlab-demo")
MARKER = ".mixlab-demo-folder"  # written by the demo into the folder it made
# what ./.mixlab-demo held when demos wrote no marker yet (they deleted it each run)
UNMARKED_DEMO = {"stack.log", "worker.log", "mixlab.db", "mixlab.db-wal", "mixlab.db-shm",
                 "broker", "artifacts"}
# the mixup paper's default; the recipe's defaults are chosen so that it shows its gain
ALPHA = 1.0


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why."""


def demo_dir(environ: dict[str, str] | None = None) -> Path:
    """MIXLAB_DATA_DIR/demo when MIXLAB_DATA_DIR is set, else ./.mixlab-demo."""
    data_dir = (os.environ if environ is None else environ).get("MIXLAB_DATA_DIR")
    return Path(data_dir) / "demo" if data_dir else DEFAULT_DIR


def fresh_folder(folder: Path) -> None:
    """Make ``folder`` an empty folder of the demo's, with its marker. A folder the
    demo made before (it has the marker) is emptied; an empty one is taken; any
    other is refused (DemoError), never deleted."""
    if folder.exists():
        if (folder / MARKER).is_file() or _unmarked_demo(folder):
            shutil.rmtree(folder)
        elif not folder.is_dir() or any(folder.iterdir()):
            raise DemoError(f"{folder} exists and the demo did not make it (it has no "
                            f"{MARKER} file); the demo will not empty it: move it away, or "
                            "point MIXLAB_DATA_DIR elsewhere (the demo uses "
                            "$MIXLAB_DATA_DIR/demo)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by mixlab demo, which empties this folder when it "
                                 "runs again\n")


def _unmarked_demo(folder: Path) -> bool:
    """./.mixlab-demo as an earlier demo, which wrote no marker, left it."""
    if folder != DEFAULT_DIR or not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return "stack.log" in names and names <= UNMARKED_DEMO


def _start_stack(folder: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXLAB_")}
    env["MIXLAB_DATA_DIR"] = str(folder)
    # each run on one thread, the two side by side: the same figures on any machine
    # (a CPU's results depend on how its sums are split across threads)
    env["MIXLAB_TORCH_THREADS"] = "1"
    log = (folder / "stack.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port),
                             "--concurrency", "2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path,
                timeout: float = 90) -> None:
    with console.status("starting the embedded stack (API, worker, SQLite, broker)…"):
        if not wait_until_ready(base_url, timeout, lambda: proc.poll() is None):
            tail = log.read_text(errors="replace").splitlines()[-12:]
            raise DemoError("the stack did not become ready; the end of its log "
                            f"({log}):\n" + "\n".join(tail))


def run_demo(epochs: int, noise: float, output: Path, port: int) -> int:
    """0 when both runs succeeded, 1 when one did not (or the demo failed on the
    way), 2 when it could not start: the port is taken, or the folder is not its."""
    folder = demo_dir()
    problem = port_problem("127.0.0.1", port)
    try:
        if problem:
            raise DemoError(problem)
        fresh_folder(folder)
    except (DemoError, OSError) as exc:
        errors.print(f"[red]error: {escape(str(exc))}[/]", soft_wrap=True)
        return 2
    errors.print(f"demo state in {folder.resolve()}", highlight=False, soft_wrap=True)
    try:
        return _run(epochs, noise, output, port, folder)
    except (DemoError, MixlabError, TimeoutError) as exc:
        errors.print(f"[red]error: {escape(str(exc))}[/]", soft_wrap=True)
        return 1


def _run(epochs: int, noise: float, output: Path, port: int, folder: Path) -> int:
    base_url = f"http://127.0.0.1:{port}"
    proc = _start_stack(folder, port)
    try:
        _wait_ready(base_url, proc, folder / "stack.log")
        with MixlabClient(base_url) as mx:
            created = mx.create_builtin_dataset("digits", name="digits-noisy",
                                                label_noise=noise, seed=0)
            with console.status("preparing the dataset…"):
                ds = mx.wait_for_dataset(created["id"], timeout=120)
            if ds["status"] != "ready":
                raise DemoError(f"the dataset failed to prepare: {ds['errors']}")
            console.print(f"registered [bold]digits[/]: {ds['num_samples']} images 8x8, "
                          f"splits {ds['split_sizes']}, {ds['noisy_train_labels']} training "
                          f"labels flipped ({noise:.0%})")
            # the default model and recipe; only the length and the seed are set
            training = {"epochs": epochs, "seed": 0}
            runs = {}
            for label, aug in (("ERM", {"method": "none"}),
                               (f"mixup α={ALPHA:g}", {"method": "mixup", "alpha": ALPHA})):
                created = mx.create_experiment({"name": f"demo-{label}", "dataset_id": ds["id"],
                                                "model": {}, "augmentation": aug,
                                                "training": training})
                runs[label] = created["run_ids"][0]
            by_id = watch_runs(mx, list(runs.values()),
                               labels={rid: label for label, rid in runs.items()})
            final = {label: by_id[rid] for label, rid in runs.items()}
            _report(mx, final)
            output.mkdir(parents=True, exist_ok=True)
            for method in ("mixup", "cutmix"):
                preview = mx.preview(ds["id"], method=method, alpha=ALPHA, seed=0, n=8)
                path = output / f"preview_{method}.png"
                path.write_bytes(mx.fetch(preview["image_url"]))
                console.print(f"preview of {method}: {path}")
        ok = all(r["status"] == "succeeded" for r in final.values())
        return 0 if ok else 1
    finally:
        with console.status("stopping the stack…"):
            stop_process_group(proc, grace_s=30.0)


def _report(mx: MixlabClient, final: dict[str, dict[str, Any]]) -> None:
    table = Table(title="noisy digits: test split (clean labels)")
    for col in ("run", "status", "test acc", "test ECE", "ECE after T", "best val acc (epoch)",
                "device", "train time"):
        table.add_column(col, no_wrap=True)
    for label, run in final.items():
        m = run["metrics"]
        history = mx.metrics(run["id"], key="val_acc").get("val_acc", [])
        best = max(history, key=lambda p: p["value"]) if history else None
        table.add_row(label, run["status"],
                      f"{m['test_acc']:.3f}" if "test_acc" in m else "-",
                      f"{m['test_ece']:.3f}" if "test_ece" in m else "-",
                      f"{m['test_ece_calibrated']:.3f}" if "test_ece_calibrated" in m else "-",
                      f"{best['value']:.3f} ({best['epoch']})" if best else "-",
                      run["worker"]["device"] or "-",
                      f"{m['train_time_s']:.0f}s" if "train_time_s" in m else "-")
        if run["status"] == "failed":
            console.print(f"[red]{label} failed:[/] {run['error']}")
    console.print(table)
