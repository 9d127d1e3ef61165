"""One rank > 0 of a local data-parallel job, as ``launch_local`` starts it:

    python -m app.ml.training.follower MODULE:FUNCTION RENDEZVOUS_JSON ARGS_JSON PARENT_PID RANK

It dies with its parent, runs ``FUNCTION(rank, rendezvous, *args)``, and leaves
its summary (or its traceback) in rank 0's store before it exits.
"""

import ctypes
import importlib
import json
import os
import signal
import sys
import traceback

from app.ml.training.distributed import Rendezvous, connect
from app.ml.training.launch import DONE_KEY, ERROR_KEY

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux), even if it died already."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def main(argv: list[str]) -> None:
    target, rendezvous_json, args_json, parent, rank_text = argv
    die_with_parent(int(parent))
    rank, rendezvous = int(rank_text), Rendezvous(**json.loads(rendezvous_json))
    module, _, name = target.partition(":")
    try:
        follow = getattr(importlib.import_module(module), name)
        summary = follow(rank, rendezvous, *json.loads(args_json))
    except BaseException:
        connect(rendezvous).set(ERROR_KEY.format(rank=rank), traceback.format_exc())
        raise
    connect(rendezvous).set(DONE_KEY.format(rank=rank), json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
