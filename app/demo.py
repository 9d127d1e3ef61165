"""``mixlab demo``: the whole service on noisy digits, ERM against mixup.

Starts the embedded stack in a fresh folder, registers scikit-learn's digits
with 40 % of training labels flipped, trains the default CNN with the default
recipe without mixing and with mixup at α = 1, shows progress while polling
over HTTP, prints test accuracy and calibration, saves preview PNGs (drawn
with the same α) and stops everything.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from app.cli import stop_process_group
from app.cli_client import watch_runs
from app.client import MixlabClient, wait_until_ready

console = Console()
DEMO_DIR = Path(".mixlab-demo")
# the mixup paper's default; the recipe's defaults are chosen so that it shows its gain
ALPHA = 1.0


def _start_stack(port: int) -> subprocess.Popen[bytes]:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXLAB_")}
    env["MIXLAB_DATA_DIR"] = str(DEMO_DIR)
    # each run on one thread, the two side by side: the same figures on any machine
    # (a CPU's results depend on how its sums are split across threads)
    env["MIXLAB_TORCH_THREADS"] = "1"
    log = (DEMO_DIR / "stack.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port),
                             "--concurrency", "2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    with console.status("starting the embedded stack (API, worker, SQLite, broker)…"):
        if not wait_until_ready(base_url, timeout, lambda: proc.poll() is None):
            raise RuntimeError(f"the stack did not become ready; see {DEMO_DIR / 'stack.log'}")


def run_demo(epochs: int, noise: float, output: Path, port: int) -> int:
    base_url = f"http://127.0.0.1:{port}"
    proc = _start_stack(port)
    try:
        _wait_ready(base_url, proc)
        with MixlabClient(base_url) as mx:
            created = mx.create_builtin_dataset("digits", name="digits-noisy",
                                                label_noise=noise, seed=0)
            with console.status("preparing the dataset…"):
                ds = mx.wait_for_dataset(created["id"], timeout=120)
            if ds["status"] != "ready":
                raise RuntimeError(f"the dataset failed to prepare: {ds['errors']}")
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
        table.add_column(col)
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
