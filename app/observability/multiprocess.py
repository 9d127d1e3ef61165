"""prometheus-client's multiprocess mode, for ``mixlab api --workers N``.

Each uvicorn worker is a separate process with its own counters and histograms;
a scrape reaches one of them. In multiprocess mode prometheus-client keeps every
process's values in memory-mapped files in one folder (PROMETHEUS_MULTIPROC_DIR)
and ``/metrics`` merges them (app.observability.metrics.exposition).

The library decides the mode once per process, when ``prometheus_client`` is
first imported, from whether the variable is in the environment: so it is set
here, in the ``mixlab api`` process, before uvicorn spawns its workers (which
inherit the environment and import the app afresh). Nothing here imports
prometheus_client.

Dead workers: the library's ``mark_process_dead(pid)`` only removes the files of
live gauges (``multiprocess_mode="live…"``); mixlab has none (counters and
histograms keep a dead process's counts, as Prometheus' counters should), so it
has nothing to call. uvicorn has no child-exit hook anyway (gunicorn's
``child_exit`` is where the library's docs call it): a worker uvicorn restarts
starts new files under its new pid, and the folder is wiped at the next start.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enabled() -> bool:
    """The library's own test (prometheus_client.values.get_value_class)."""
    return ENV in os.environ


@contextmanager
def directory(workers: int) -> Iterator[Path | None]:
    """The folder the API processes share their metrics through, for the time
    the API runs; None where there is one process and the operator set none.

    A folder the operator set (PROMETHEUS_MULTIPROC_DIR) is used whatever
    ``workers`` is: it is created if missing and its ``*.db`` files (the
    library's, from an earlier start) are removed; anything else in it is left.
    Otherwise, for more than one worker, a fresh temporary folder is made, put
    in the environment, and removed when the API stops.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    os.environ.pop(ENV, None)  # set but empty: the library would write into the cwd
    if workers <= 1:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="mixlab-prometheus-"))
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)
