"""`mnist-classify --engine ray` on a real Ray: a local one, and a two-node cluster on loopback.

The cluster is what `ray start` builds for an operator: a head node and a second node that
joins it, each with its own resources, both on 127.0.0.1. Ray's own task records (its state
API) say where the work ran; the rows must equal the local engine's, byte for byte.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.batch_cli import classify_process, messy_inbox, rows
from tests.helpers import free_port

if importlib.util.find_spec("ray") is None:  # found, not imported: collecting stays cheap
    pytest.skip("the Ray engine needs the [batch] extra", allow_module_level=True)
pytestmark = pytest.mark.slow  # starts real Ray clusters

RAY = str(Path(sys.executable).parent / "ray")


def ray_env(tmp_path: Path) -> dict:
    """This test's own Ray: token auth with a token of its own, nothing shared with ~/.ray."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HOME": str(tmp_path / "home"),
    }


def test_local_ray_gives_the_local_engines_rows_and_error_rows(tmp_path, mnist, model_repository):
    inbox = messy_inbox(tmp_path, mnist)
    env = ray_env(tmp_path)
    args = (str(inbox), "--model-repository", str(model_repository), "--probabilities", "--batch-size", "3")
    local = classify_process(*args, env=env)
    ray = classify_process(*args, "--engine", "ray", "--concurrency", "2", env=env, timeout=600)
    assert local[0] == ray[0] == 3, ray[2][-3000:]
    assert ray[1] == local[1]  # the same rows, in the same order, byte for byte
    errors = {Path(r["source"]).name: r["error"] for r in rows(ray[1]) if r["error"]}
    assert set(errors) == {"corrupt.png", "truncated.jpg", "empty.png"}
    assert "not a valid PNG file" in errors["corrupt.png"]
    assert "3 failed" in ray[2] and "2 not images" in ray[2]


class RayCluster:
    """`ray start --head`, then a second `ray start --address` joining it: two nodes, each
    with its own resources, both on loopback; stopped by signalling the `--block` processes."""

    def __init__(self, root: Path, env: dict) -> None:
        self.root, self.env = root, env
        self.port, self.dashboard = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        # Ray's Unix sockets live under its temp dir, and their paths must fit in 107 bytes.
        self.sessions = tempfile.mkdtemp(prefix="ray-")

    def _start(self, *args: str, log: str) -> None:
        out = (self.root / log).open("w")
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
        common.append("--object-store-memory=200000000")
        command = [RAY, "start", *common, *args]
        self.nodes.append(subprocess.Popen(command, env=self.env, stdout=out, stderr=out, cwd=self.root))

    def _wait_for(self, resource: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [RAY, "status", "--address", self.address], env=self.env, capture_output=True, text=True
            )
            if done.returncode == 0 and resource in done.stdout:
                return
            if any(node.poll() is not None for node in self.nodes):
                break
            time.sleep(0.5)  # polling Ray's own status, not synchronising with our code
        logs = "\n".join(p.read_text()[-2000:] for p in self.root.glob("*.log"))
        raise AssertionError(f"Ray node with {resource} did not come up:\n{logs}")

    def __enter__(self) -> RayCluster:
        self._start(
            "--head",
            f"--port={self.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard}",
            f"--temp-dir={self.sessions}",
            '--resources={"head_node": 1}',
            log="head.log",
        )
        self._wait_for("head_node")
        self._start(f"--address={self.address}", '--resources={"second_node": 1}', log="second.log")
        self._wait_for("second_node")
        return self

    def tasks(self) -> list[dict]:
        command = [RAY, "list", "tasks", "--address", self.address, "--detail", "--format", "json"]
        done = subprocess.run(
            [*command, "--limit", "10000"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(done.stdout)

    def __exit__(self, *exc: object) -> None:
        for node in reversed(self.nodes):
            node.terminate()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        shutil.rmtree(self.sessions, ignore_errors=True)


def test_two_node_cluster_shares_the_work_and_gives_identical_rows(tmp_path, mnist, model_repository):
    # The job runs where an operator runs it: relative inputs and repository, from its own
    # directory; the nodes were started elsewhere, so a worker resolving paths from its own
    # directory would fail (or find another model).
    job = tmp_path / "job"
    images = job / "scans"
    for i in range(240):
        folder = images / f"batch-{i // 60}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - mnist.x_test[i]).save(folder / f"{i:04d}.png")
    (images / "batch-1" / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n torn")
    (job / "models").symlink_to(model_repository, target_is_directory=True)
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    env = ray_env(tmp_path)

    args = ("scans", "--model-repository", "models", "--batch-size", "8")
    local = classify_process(*args, cwd=job, env=env)
    with RayCluster(nodes, env) as cluster:
        code, out, err = classify_process(
            *args, "--engine", "ray", "--ray-address", cluster.address, cwd=job, env=env, timeout=600
        )
        tasks = cluster.tasks()
    assert code == local[0] == 3, err[-3000:]
    assert out == local[1]
    table = rows(out)
    assert len(table) == 241 and [r["source"] for r in table if r["error"]] == ["scans/batch-1/torn.png"]
    truth = [int(mnist.y_test[int(Path(r["source"]).stem)]) for r in table if not r["error"]]
    labels = [int(r["label"]) for r in table if not r["error"]]
    assert np.mean(np.array(truth) == np.array(labels)) > 0.9

    # Ray's records: decoding tasks and classifier calls, each on both nodes.
    where: dict[str, set[str]] = defaultdict(set)
    for task in tasks:
        if task["state"] == "FINISHED" and task.get("node_id"):
            where[task["name"]].add(task["node_id"])
    decode = set().union(*(n for name, n in where.items() if "prepare_row" in name))
    classify_calls = set().union(*(n for name, n in where.items() if "ChunkClassifier" in name))
    assert len(decode) == 2, dict(where)
    assert len(classify_calls) >= 1, dict(where)


def test_the_bearer_token_reaches_actors_by_reference_never_as_an_argument(tmp_path):
    """Ray's dashboard lists actor constructor arguments: the spec handed to the actors holds
    an object-store reference, and each actor fetches the token itself."""
    code = """
import ray
from mnist_serving.client.batch.ray_engine import BackendSpec
ray.init(num_cpus=1, include_dashboard=False)
spec = BackendSpec(client={"server": "127.0.0.1:1", "token": "s3cret-token"})
shown = spec.without_secrets()
assert "token" not in shown.client and "s3cret-token" not in repr(shown), repr(shown)
assert ray.get(shown.token_ref) == "s3cret-token"
assert shown.build().client.options.token == "s3cret-token"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=ray_env(tmp_path),
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
