"""Automatic sizes count the CPUs this process may use: affinity and the cgroup's quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_serving.common import cpus


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


@pytest.mark.parametrize(
    ("membership", "files", "quota"),
    [
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 1.5),
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/cpu.max": "100000 100000\n"}, 1.0),  # set above
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        ("0::/\n", {}, None),
        (
            "4:cpu,cpuacct:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            2.0,
        ),
        (
            "4:cpu,cpuacct:/docker/abc\n",
            {
                "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n",
                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            None,
        ),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path, membership, files, quota):
    root, proc = _cgroup(tmp_path, membership, files)
    assert cpus.cgroup_quota(root, proc) == quota


def test_available_cpus_is_the_smaller_of_affinity_and_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = _cgroup(tmp_path, "0::/pod\n", {"pod/cpu.max": "150000 100000\n"})
    assert cpus.available_cpus(root, proc) == 2  # 1.5 CPUs: two threads may run
    root, proc = _cgroup(tmp_path / "none", "0::/\n", {})
    assert cpus.available_cpus(root, proc) == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert cpus.available_cpus(root, proc) == 1
