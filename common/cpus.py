"""How many CPUs this process may use: what every automatic size counts.

``os.cpu_count()`` is the host's; a container limited to one CPU on a 64-core node would
start 64 decode processes. The answer is the smallest of the CPUs this process may run on
(``sched_getaffinity``: ``taskset``, cpusets) and its cgroup's CPU quota (v2 ``cpu.max``, or
v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(
    cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """CPUs this process may use, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root, proc_self_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota in CPUs (``cpu.max`` 150000 100000 → 1.5), or None when unlimited or unknown."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            for directory in _up_to_root(cgroup_root, relative):
                quota = _v2_quota(directory / "cpu.max")
                if quota is not None:
                    return quota
        elif "cpu" in controllers.split(","):
            for base in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
                for directory in _up_to_root(base, relative):
                    quota = _v1_quota(directory)
                    if quota is not None:
                        return quota
    return None


def _up_to_root(base: Path, relative: str) -> list[Path]:
    """The process's cgroup directory and its parents (a limit may be set higher up); inside
    a container the cgroup namespace makes the process's own directory the root."""
    parts = [p for p in relative.split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period
