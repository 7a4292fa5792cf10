"""Child processes that never outlive their parent, whatever killed it.

Decode workers are started by a fork server; if the process that owns them is killed with
-9 (as the OOM killer does), nothing would stop them. On Linux each is given a parent-death
signal: the fork server dies with its owner, and each worker with the fork server.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (a no-op where Linux's prctl is missing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def worker_init() -> None:
    """Each decode worker: dies with its parent, and leaves Ctrl-C to its owner, which stops
    the pool itself (a terminal's Ctrl-C reaches the whole process group; SIGTERM is kept, as
    the pool uses it to stop a broken pool's workers)."""
    die_with_parent()
    # A worker still starting when its owner was killed: the parent-death signal came too late
    # (it is set against the fork server, which may be gone already). Its owner's sentinel says so.
    owner = multiprocessing.parent_process()
    if owner is not None and not owner.is_alive():
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
