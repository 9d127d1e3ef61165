"""How much memory this process may use: what decides whether a prepared dataset
is held in memory (the resident path) or streamed from its shards."""

import os
import resource
from pathlib import Path

# cgroup limits, v2 then v1; "max" or an absurd v1 number means none
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
# the resident path peaks near twice the dataset (it, and the train rows copied
# out); a quarter of the memory leaves room for that, the model and the page cache
RESIDENT_SHARE = 0.25
# the shuffle window: an eighth of the memory (two windows are paged in at
# once), at most 1 GiB
WINDOW_SHARE = 0.125
MAX_WINDOW_BYTES = 1024**3


def physical_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cgroup_bytes() -> int | None:
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < physical_bytes():
            return int(text)
    return None


def _rlimit_bytes() -> int | None:
    limits = [resource.getrlimit(r)[0] for r in (resource.RLIMIT_DATA, resource.RLIMIT_AS)]
    finite = [v for v in limits if v != resource.RLIM_INFINITY]
    return min(finite) if finite else None


def memory_limit_bytes() -> int:
    """The least of physical memory, the cgroup's limit and the process's
    ``RLIMIT_DATA`` / ``RLIMIT_AS``."""
    found = [physical_bytes(), _cgroup_bytes(), _rlimit_bytes()]
    return min(v for v in found if v is not None)


def default_resident_bytes() -> int:
    return int(memory_limit_bytes() * RESIDENT_SHARE)


def default_window_bytes() -> int:
    return min(MAX_WINDOW_BYTES, int(memory_limit_bytes() * WINDOW_SHARE))
