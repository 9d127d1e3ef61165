"""Mixing ops: mixlab's ``mix`` against timm's ``Mixup``, the textbook formula and a clone.

Issue 3 asks how close mixlab's batched mixing ops come to the memory bound, and
how they compare with what people use today, timed in one process on the same
batch.

What is measured
----------------
Batch: ``--batch`` x ``--channels`` x ``--size`` x ``--size`` random values
(default 256x3x64x64 fp32, 12.6 MB), class-index targets over 1,000 classes.
Every contender gets the same batch. Contenders, one row each:

* ``clone``: ``x.clone()``, the memory bound (read once, write once); on CUDA
  this is one device-to-device copy of the batch.
* ``textbook``: ``lam * x + (1 - lam) * x[perm]`` with a scalar λ drawn on the
  host (``random.betavariate``) and ``perm = torch.randperm(n)``; inputs only.
* ``mixlab mixup`` / ``mixlab cutmix``: ``app.ml.mixing.mix({"image": x}, y,
  MixSpec(method=..., alpha=1.0), generator, 1000)`` as the service calls it:
  λ and partners drawn on the batch's device, dense targets mixed too, a new
  output tensor returned, the caller's tensor untouched (checked below).
* ``timm mixup`` / ``timm cutmix``: timm's ``Mixup(mixup_alpha=1, cutmix_alpha=0)``
  (resp. ``cutmix_alpha=1, mixup_alpha=0``) with ``mode='batch'``,
  ``num_classes=1000``, ``label_smoothing=0``, called as its users call it,
  ``x, target = mixer(x, target)``, which mixes ``x`` *in place*. So that every
  call mixes clean data, each timed call gets a fresh ``clone()`` of the batch
  made *outside* the timed region: timm is not charged for that copy, nor for
  allocating its output. timm's batch mode flips the batch (partner of i is
  n-1-i) and needs an even batch size; it is skipped (with a note) otherwise.
  timm is not a dependency: the benchmark loads the one file it needs,
  ``timm/data/mixup.py`` (torch and numpy only), by path, from an installed
  timm (found with ``importlib.util.find_spec``, without importing the ``timm``
  package, which pulls torchvision) or from ``--timm-mixup PATH``. Without
  either, the timm rows are skipped and the output says so.
* ``clone (multimodal)`` / ``mixlab cross_modal``: only when ``cross_modal`` is
  in ``app.ml.mixing.METHODS``: a 1,024-sample batch (image 1024x3x32x32,
  tabular 1024x64, audio spectrogram 1024x1x64x64) mixed with
  ``MixSpec(method="cross_modal")`` (default per-modality ops), against a clone
  of the three tensors. If the method is not registered, or the spec or the
  first call fails, the row is skipped and the reason printed. Any contender
  whose method is not registered is skipped the same way.

Timing: ``time.perf_counter`` around each call (with ``torch.cuda.synchronize``
before and after on CUDA); ``--calls`` calls per contender per round (default
10), the round's figure is their median. The machine is noisy, so contenders
run interleaved (A B C ... A B C ...), the order rotated by one each round, for
``--rounds`` rounds (default 15) after one untimed warm-up round. Per contender
the summary is the median per-round time, the median of per-round ratios to
``clone`` (same round), and for mixlab vs timm the median of per-round ratios
timm/mixlab (> 1: mixlab faster). Thread count is PyTorch's default unless
``--threads`` says otherwise: on a busy 2-core machine every parallel region
can wait a scheduler slice for the other core, so ``--threads 1`` gives the
bandwidth figures there. On POSIX the table also shows minor page faults per
timed call: memory the allocator had to map afresh, which costs as much as the
copying itself on some VMs.

Targets (issue 3): on CPU, mixup within 1.6 clones and at least 1.5x faster
than timm's in-place batch mode, without touching the caller's tensor; on a
GPU, mixup within 1.6x of one device-to-device copy of the batch.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mixing.py                       # defaults, auto device
    .venv/bin/python benchmarks/mixing.py --quick               # smoke run
    .venv/bin/python benchmarks/mixing.py --timm-mixup /tmp/mixup.py --json out.json
    .venv/bin/python benchmarks/mixing.py --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/mixing.py --threads 1          # busy CPU machine

The output ends with ``RESULT mixing: ...`` lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

try:  # minor page faults per call, to explain allocator costs (POSIX only)
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.ml import mixing  # noqa: E402
from app.ml.mixing import MixSpec, mix  # noqa: E402

NUM_CLASSES = 1000
MIXUP_TARGET = 1.6  # x clone (CPU) / x device-to-device copy (GPU)
TIMM_SPEEDUP_TARGET = 1.5  # CPU only


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = "cpu"
    return info


# --------------------------------------------------------------------------- timm


def locate_timm_mixup(explicit: str | None) -> tuple[Path | None, str]:
    """Path of timm's ``data/mixup.py`` and where it came from (or why none)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            return None, f"--timm-mixup {explicit}: no such file"
        return path, f"--timm-mixup {path}"
    try:
        spec = importlib.util.find_spec("timm")  # does not import timm
    except (ImportError, ValueError) as exc:
        return None, f"timm not found ({exc})"
    if spec is None or not spec.submodule_search_locations:
        return None, "timm is not installed (pip install timm, or pass --timm-mixup PATH)"
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mixup.py"
        if path.is_file():
            return path, f"installed timm at {location}"
    return None, "timm is installed but has no data/mixup.py"


def load_timm_mixup(path: Path) -> ModuleType:
    """Load timm's mixup.py alone, by file path (it needs only torch and numpy)."""
    spec = importlib.util.spec_from_file_location("_bench_timm_mixup", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "Mixup"):
        raise ImportError(f"{path} defines no Mixup")
    return module


def timm_version(explicit: bool) -> str:
    """timm's version from its installed metadata; unknown for a file given by path."""
    if explicit:
        return "unknown (file given by --timm-mixup)"
    try:
        from importlib.metadata import version

        return version("timm")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    name: str
    call: Callable[[Any], Any]
    prepare: Callable[[], Any] = lambda: None  # runs before each call, outside the timer
    reference: str = "clone"  # the clone row this contender's ratio is taken against
    rounds: list[float] = field(default_factory=list)  # per-round median seconds
    faults: int = 0  # minor page faults during timed calls (CPU, POSIX)
    calls: int = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_round(c: Contender, calls: int, device: torch.device) -> float:
    times = []
    for _ in range(calls):
        arg = c.prepare()
        sync(device)
        f0 = minor_faults()
        t0 = time.perf_counter()
        c.call(arg)
        sync(device)
        times.append(time.perf_counter() - t0)
        c.faults += minor_faults() - f0
        c.calls += 1
    return statistics.median(times)


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def speed_text(speed: float | None) -> str:
    if speed is None:
        return ""
    return f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower"


def method_available(method: str) -> bool:
    if method in mixing.METHODS:
        return True
    print(f"note: mixing method {method!r} is not registered in app.ml.mixing.METHODS "
          f"(known: {sorted(mixing.METHODS)}); skipping its row")
    return False


def multimodal_batch(n: int, dtype: torch.dtype, device: torch.device,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "image": torch.randn(n, 3, 32, 32, generator=gen, device=device).to(dtype),
        "tabular": torch.randn(n, 64, generator=gen, device=device).to(dtype),
        "audio": torch.randn(n, 1, 64, 64, generator=gen, device=device).to(dtype),
    }


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype
          ) -> tuple[list[Contender], dict[str, Any]]:
    """The contenders, after one correctness check of each; plus notes for the report."""
    notes: dict[str, Any] = {"skipped": {}}
    data_gen = torch.Generator(device=device).manual_seed(args.seed)
    n, c, s = args.batch, args.channels, args.size
    x = torch.randn(n, c, s, s, generator=data_gen, device=device).to(dtype)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=data_gen, device=device)
    mix_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    host_rng = random.Random(args.seed + 2)
    np.random.seed(args.seed + 3)  # timm draws λ and the box with np.random

    contenders = [Contender("clone", lambda _: x.clone())]

    def textbook(_: Any) -> torch.Tensor:
        lam = host_rng.betavariate(1.0, 1.0)
        perm = torch.randperm(n, device=device)
        return lam * x + (1 - lam) * x[perm]

    contenders.append(Contender("textbook", textbook))

    timm_mod: ModuleType | None = None
    path, origin = locate_timm_mixup(args.timm_mixup)
    if path is not None:
        try:
            timm_mod = load_timm_mixup(path)
            version = timm_version(bool(args.timm_mixup))
            notes["timm"] = {"path": str(path), "origin": origin, "version": version}
            print(f"timm: loaded {path} ({origin}; timm version {version})")
        except Exception as exc:
            origin = f"loading {path} failed: {type(exc).__name__}: {exc}"
    if timm_mod is None:
        print(f"timm: skipped the comparison: {origin}")
        notes["skipped"]["timm"] = origin
    elif n % 2:
        reason = f"timm's Mixup needs an even batch size, got {n}"
        print(f"timm: skipped the comparison: {reason}")
        notes["skipped"]["timm"] = reason
        timm_mod = None

    untouched: dict[str, bool] = {}
    for method in ("mixup", "cutmix"):
        if method_available(method):
            spec = MixSpec(method=method, alpha=1.0)
            saved = x.clone()
            out = mix({"image": x}, y, spec, mix_gen, NUM_CLASSES)
            sync(device)
            untouched[method] = bool(torch.equal(x, saved))
            if out.inputs["image"].data_ptr() == x.data_ptr():
                untouched[method] = False
            del saved, out

            def run_mix(_: Any, spec: MixSpec = spec) -> Any:
                return mix({"image": x}, y, spec, mix_gen, NUM_CLASSES)

            contenders.append(Contender(f"mixlab {method}", run_mix))
        else:
            notes["skipped"][f"mixlab {method}"] = "not registered"
        if timm_mod is not None:
            alphas = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0} if method == "mixup" else \
                {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}
            mixer = timm_mod.Mixup(**alphas, mode="batch", num_classes=NUM_CLASSES,
                                   label_smoothing=0.0)
            target = y.clone()

            def run_timm(xc: torch.Tensor, mixer: Any = mixer, target: torch.Tensor = target
                         ) -> Any:
                return mixer(xc, target)

            contenders.append(Contender(f"timm {method}", run_timm, prepare=x.clone))
    notes["untouched"] = untouched

    if method_available("cross_modal"):
        mm_gen = torch.Generator(device=device).manual_seed(args.seed + 4)
        mm = multimodal_batch(args.mm_batch, dtype, device, mm_gen)
        mm_y = torch.randint(0, NUM_CLASSES, (args.mm_batch,), generator=mm_gen, device=device)
        try:
            cm_spec = MixSpec(method="cross_modal")
        except Exception as exc:
            reason = f"MixSpec(method='cross_modal') failed: {type(exc).__name__}: {exc}"
            print(f"note: skipping cross_modal: {reason}")
            notes["skipped"]["mixlab cross_modal"] = reason
        else:
            try:
                saved_mm = {k: v.clone() for k, v in mm.items()}
                mix(mm, mm_y, cm_spec, mm_gen, NUM_CLASSES)
                sync(device)
                untouched["cross_modal"] = all(torch.equal(mm[k], saved_mm[k]) for k in mm)
                del saved_mm
            except Exception as exc:
                reason = f"first call failed: {type(exc).__name__}: {exc}"
                print(f"note: skipping cross_modal: {reason}")
                notes["skipped"]["mixlab cross_modal"] = reason
            else:
                notes["cross_modal_spec"] = repr(cm_spec)
                contenders.append(Contender(
                    "clone (multimodal)", lambda _: {k: v.clone() for k, v in mm.items()},
                    reference="clone (multimodal)"))
                contenders.append(Contender(
                    "mixlab cross_modal",
                    lambda _: mix(mm, mm_y, cm_spec, mm_gen, NUM_CLASSES),
                    reference="clone (multimodal)"))
    else:
        notes["skipped"]["mixlab cross_modal"] = "not registered"

    notes["batch_bytes"] = x.numel() * x.element_size()
    return contenders, notes


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=64, help="image height = width")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--mm-batch", type=int, default=1024, help="multimodal batch (cross_modal)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=10, help="timed calls per contender per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: PyTorch's default)")
    p.add_argument("--timm-mixup", metavar="PATH", default=None,
                   help="timm's data/mixup.py, e.g. extracted from a timm wheel")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 32x3x32x32, multimodal batch 128, 3 rounds, 3 calls "
                        "(flags given explicitly win)")
    args = p.parse_args(argv)
    if args.quick:  # only where the flag was left at its default
        for name, value in (("batch", 32), ("size", 32), ("mm_batch", 128), ("rounds", 3),
                            ("calls", 3)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if args.batch < 2 or args.rounds < 1 or args.calls < 1:
        p.error("--batch must be >= 2, --rounds and --calls >= 1")
    return args


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(choice)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    machine = machine_info(device)
    print(f"machine: {machine['cpu']}, {machine['cpu_cores']} cores "
          f"({machine['torch_threads']} torch threads), torch {machine['torch']}, "
          f"device {machine['device_name']}")
    if machine["load_average"]:
        print("load average before: " + ", ".join(f"{v:.2f}" for v in machine["load_average"]))
    print(f"batch: {args.batch}x{args.channels}x{args.size}x{args.size} {args.dtype}, "
          f"{NUM_CLASSES} classes; {args.rounds} rounds x {args.calls} calls, interleaved")

    contenders, notes = build(args, device, dtype)
    print(f"batch size in memory: {notes['batch_bytes'] / 1e6:.1f} MB")
    for method, ok in notes["untouched"].items():
        print(f"check: mixlab {method} leaves the caller's tensor untouched: "
              f"{'yes' if ok else 'NO'}")
    if any(c.name.startswith("timm") for c in contenders):
        print("note: timm mixes in place; each timed timm call gets a fresh clone of the batch "
              "made outside the timed region (not charged to timm)")

    for c in contenders:  # untimed warm-up round
        time_round(c, min(2, args.calls), device)
        c.faults = c.calls = 0
    k = len(contenders)
    for r in range(args.rounds):
        for c in contenders[r % k:] + contenders[: r % k]:
            c.rounds.append(time_round(c, args.calls, device))
        print(f"  round {r + 1}/{args.rounds}: "
              + ", ".join(f"{c.name} {c.rounds[-1] * 1e3:.2f}" for c in contenders) + " ms",
              flush=True)

    by_name = {c.name: c for c in contenders}
    rows: dict[str, dict[str, Any]] = {}
    for c in contenders:
        ref = by_name[c.reference]
        rows[c.name] = {
            "median_ms": statistics.median(c.rounds) * 1e3,
            "min_ms": min(c.rounds) * 1e3,
            "max_ms": max(c.rounds) * 1e3,
            "x_clone": median_ratio(c.rounds, ref.rounds),
            "reference": c.reference,
            "faults_per_call": c.faults / c.calls if resource and c.calls else None,
            "rounds_ms": [t * 1e3 for t in c.rounds],
        }
    for method in ("mixup", "cutmix"):
        ours, theirs = by_name.get(f"mixlab {method}"), by_name.get(f"timm {method}")
        if ours and theirs:
            rows[ours.name]["speedup_vs_timm"] = median_ratio(theirs.rounds, ours.rounds)

    copy_word = "D2D copy" if device.type == "cuda" else "clone"
    print()
    print(f"{'contender':22s} {'median ms':>10s} {'min..max ms':>17s} "
          f"{'x ' + copy_word:>11s} {'mixlab vs timm':>15s} {'faults/call':>12s}")
    for name, row in rows.items():
        speed = row.get("speedup_vs_timm")
        ref = "" if row["reference"] == "clone" else " (mm)"
        faults = row["faults_per_call"]
        print(f"{name:22s} {row['median_ms']:10.3f} "
              f"{row['min_ms']:8.3f}..{row['max_ms']:<8.3f} {row['x_clone']:6.2f}x{ref:5s}"
              f" {speed_text(speed):>15s}"
              f" {'' if faults is None else f'{faults:.0f}':>12s}")
    print("(x clone: median of per-round ratios to clone in the same round; (mm): to the clone "
          "of the multimodal batch; mixlab vs timm: median of per-round timm/mixlab; "
          "faults/call: minor page faults per timed call, i.e. fresh memory the allocator "
          "had to map)")
    if hasattr(os, "getloadavg"):
        print("load average after: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    print()

    results: list[str] = []
    if "mixlab mixup" in rows:
        row = rows["mixlab mixup"]
        line = (f"RESULT mixing: mixup = {row['x_clone']:.2f}x {copy_word} "
                f"(target <= {MIXUP_TARGET})")
        if "speedup_vs_timm" in row:
            tgt = f" (target >= {TIMM_SPEEDUP_TARGET})" if device.type == "cpu" else ""
            line += f", {row['speedup_vs_timm']:.2f}x faster than timm{tgt}"
        else:
            line += ", timm comparison skipped"
        untouched = bool(notes["untouched"].get("mixup"))
        line += f", input untouched: {'yes' if untouched else 'NO'}"
        met = row["x_clone"] <= MIXUP_TARGET and untouched
        if device.type == "cpu":
            met = met and row.get("speedup_vs_timm", 0.0) >= TIMM_SPEEDUP_TARGET
        line += f"; targets {'met' if met else 'NOT met'}"
        results.append(line)
    else:
        results.append("RESULT mixing: mixup skipped (not registered)")
    if "mixlab cutmix" in rows:
        row = rows["mixlab cutmix"]
        line = f"RESULT mixing: cutmix = {row['x_clone']:.2f}x {copy_word}"
        if "speedup_vs_timm" in row:
            line += f", {row['speedup_vs_timm']:.2f}x faster than timm"
        results.append(line)
    if "textbook" in rows:
        results.append(f"RESULT mixing: textbook lam*x+(1-lam)*x[perm] = "
                       f"{rows['textbook']['x_clone']:.2f}x {copy_word}")
    if "timm mixup" in rows:
        results.append(f"RESULT mixing: timm mixup (in place) = "
                       f"{rows['timm mixup']['x_clone']:.2f}x {copy_word}")
    if "mixlab cross_modal" in rows:
        results.append(f"RESULT mixing: cross_modal = {rows['mixlab cross_modal']['x_clone']:.2f}x "
                       f"{copy_word} of the multimodal batch ({args.mm_batch} samples)")
    else:
        why = notes["skipped"].get("mixlab cross_modal", "skipped")
        results.append(f"RESULT mixing: cross_modal skipped ({why})")
    for line in results:
        print(line)

    if args.json:
        payload = {
            "benchmark": "mixing",
            "machine": machine,
            "args": vars(args),
            "notes": notes,
            "rows": rows,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
