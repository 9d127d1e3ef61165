"""The section of RESULTS.md that ``benchmarks/gpu/run.sh`` measured, from its outputs.

Usage: ``python benchmarks/gpu/summary.py OUT [STAGE STATUS ...]``; reads
``OUT/run.log`` (the ``RESULT`` lines), ``train_throughput.json``,
``mixing.json``, ``pytest.xml`` and ``quality.md`` where they exist, prints the
section and writes it to ``OUT/summary.md``.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _machine(out: Path) -> str:
    throughput = _json(out / "train_throughput.json")
    if throughput is not None:
        m = throughput["machine"]
        return (f"{m['device']}; torch {m['torch']}, Python {m['python']}, {m['cores']} CPU "
                f"cores ({m['cpu']})")
    mixing = _json(out / "mixing.json")
    if mixing is not None:
        m = mixing["machine"]
        return f"{m['device_name']}; torch {m['torch']}, Python {m['python']}"
    return "unknown (no benchmark output)"


def _tests(out: Path) -> str:
    try:
        root = ET.parse(out / "pytest.xml").getroot()
    except (OSError, ET.ParseError):
        return "no report (the stage did not run or was cut off before writing it)"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites)
             for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    failed = [f"{case.get('classname', '')}::{case.get('name')}"
              for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    line = (f"{passed} passed, {total['failures']} failed, {total['errors']} errors, "
            f"{total['skipped']} skipped (pytest -m cuda)")
    return line + "".join(f"\n  - failed: {name}" for name in failed[:10])


def summary(out: Path, stages: list[str]) -> str:
    log = (out / "run.log").read_text(errors="replace") if (out / "run.log").exists() else ""
    results = [line for line in log.splitlines() if line.startswith("RESULT ")]
    quality = (out / "quality.md").read_text() if (out / "quality.md").exists() else None
    machine = _machine(out)
    title = f"Measured with benchmarks/gpu/run.sh ({datetime.now(UTC):%Y-%m-%d})"
    if machine.startswith("cpu"):
        title = "Dry run of benchmarks/gpu/run.sh on a CPU (not a GPU measurement)"
    lines = [f"### {title}", "", f"Machine: {machine}.", "", "```"]
    lines += results or ["(no RESULT lines: see run.log)"]
    lines += ["```", "", f"CUDA tests: {_tests(out)}", ""]
    if quality is not None:
        lines += ["Quality (preact_resnet18, Fashion-MNIST padded to 32×32, the mixup paper's "
                  "recipe):", "", quality.strip(), ""]
    else:
        lines += ["Quality: no table (the stage did not finish a run).", ""]
    if stages:
        lines += ["Stages: " + "; ".join(stages) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    text = summary(out, argv[1:])
    (out / "summary.md").write_text(text)
    print("\n==== paste into benchmarks/RESULTS.md ====\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
