"""The folder ``mixlab api`` shares its processes' metrics through
(app.observability.multiprocess.directory)."""

import os
import tempfile
from pathlib import Path

import pytest

from app.observability import multiprocess


def test_one_process_and_no_folder_set_is_single_process_mode(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    with multiprocess.directory(1) as folder:
        assert folder is None and not multiprocess.enabled()


@pytest.mark.parametrize("given", [None, ""])
def test_several_processes_get_a_fresh_folder_removed_at_the_end(
        monkeypatch, tmp_path: Path, given: str | None) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    if given is None:
        monkeypatch.delenv(multiprocess.ENV, raising=False)
    else:
        monkeypatch.setenv(multiprocess.ENV, given)  # set but empty: not a folder
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with multiprocess.directory(2) as folder:
        assert folder is not None and folder.parent == tmp_path
        assert folder.is_dir() and not any(folder.iterdir())
        assert multiprocess.enabled() and os.environ[multiprocess.ENV] == str(folder)
    assert not folder.exists() and not multiprocess.enabled()


def test_the_operators_folder_is_kept_and_wiped_of_old_metrics(monkeypatch,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    monkeypatch.setenv(multiprocess.ENV, str(folder))
    with multiprocess.directory(1) as got:  # honoured even for one process
        assert got == folder and folder.is_dir()
    (folder / "histogram_123.db").write_bytes(b"old")
    (folder / "README").write_text("not the library's")
    with multiprocess.directory(4) as got:
        assert got == folder
        assert sorted(p.name for p in folder.iterdir()) == ["README"]
    assert folder.is_dir() and multiprocess.enabled()
