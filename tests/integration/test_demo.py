"""The main job, as the README runs it: `mixlab demo` on the embedded stack."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_the_demo_trains_erm_and_mixup_and_writes_previews(tmp_path: Path) -> None:
    # piped, as from a shell script, with COLUMNS unset: the table must stay one
    # line per run all the same; the state goes under MIXLAB_DATA_DIR
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXLAB_")
           and k != "COLUMNS"}
    env["MIXLAB_DATA_DIR"] = str(tmp_path / "state")
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--epochs", "2", "--port", str(free_port()),
         "--output", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "504 training labels flipped (40%)" in done.stdout
    rows = [line for line in done.stdout.splitlines() if "succeeded" in line and "│" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["ERM", "mixup α=1"], done.stdout
    for row in rows:  # every column on the run's one line: nothing folded
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert len(cells) == 8 and all(cells), row
    for method in ("mixup", "cutmix"):
        assert (tmp_path / "out" / f"preview_{method}.png").read_bytes()[:8] == \
            b"\x89PNG\r\n\x1a\n"
    state = tmp_path / "state" / "demo"
    assert (state / "stack.log").is_file() and (state / ".mixlab-demo-folder").is_file()
    assert not (tmp_path / ".mixlab-demo").exists()
