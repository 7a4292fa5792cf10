"""Child processes that never outlive their parent, whatever killed it.

Decode workers are started by a fork server; if the process that owns them is killed with
-9 (as the OOM killer does), nothing would stop them. On Linux each is given a parent-death
signal: the fork server dies with its owner, and each worker with the fork server.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (a no-op where Linux's prctl is missing).
    Linux sends it when the parent's *thread* that started this process ends: start such a
    process from a thread that lives as long as it should (the main thread, the event loop's
    executor, a pool's feeder)."""
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


def workers_skip_the_main_script(package: str) -> None:
    """Called by a console script before it starts any worker. multiprocessing re-runs the
    script that started the program in each worker it starts (fork server and spawn alike), and
    a console script imports the whole program: the server's onnxruntime and web stack, or the
    batch tool's, in processes that only decode (about 0.3 CPU-s and tens of MB each). A
    ``__main__`` named as ``python -m`` names it tells multiprocessing there is nothing to re-run;
    workers import only what their task needs."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.machinery.ModuleSpec(f"{package}.__main__", None)
