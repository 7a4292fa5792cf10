"""docker-compose.yml run for real: a Docker engine, the real Dockerfiles, empty volumes.

Run with `make compose-test` (CI runs it after `make test`). The steps share one stack and
run in file order, as an operator would: train → export → serve, scale, a replica killed,
hot reload, monitoring, graceful stops, clean-up. Figures go to the report file
(``MNIST_SERVING_COMPOSE_REPORT``, default ``bench/results/compose.json``); docs/deploy.md
quotes one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from mnist_serving.client import AsyncClient, ClassifyError, Client
from mnist_serving.common.contract import MODEL_NAME
from tests.helpers import free_port, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
PROJECT = "mnist-serving-compose-test"
TAG = "compose-test"
POLL_INTERVAL = 5  # the servers' repository poll, seconds (compose default)
REPORT: dict = {}


def _engine_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "no Docker engine answers (make compose-test starts dockerd where it is installed)"
    return None


_REASON = _engine_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)


LB_PORT = free_port()
LB_HTTP_PORT = free_port()
PROMETHEUS_PORT = free_port()
ENV = {
    **os.environ,
    "MNIST_SERVING_IMAGE_TAG": TAG,
    "MNIST_SERVING_LB_PORT": str(LB_PORT),
    "MNIST_SERVING_LB_HTTP_PORT": str(LB_HTTP_PORT),
    "MNIST_SERVING_PROMETHEUS_PORT": str(PROMETHEUS_PORT),
    # A short run: the whole pipeline, not the full recipe (README: how to train fully).
    "MNIST_SERVING_TRAIN_EPOCHS": "2",
    "MNIST_SERVING_POLL_INTERVAL": str(POLL_INTERVAL),
}
ENV.pop("MNIST_SERVING_NEW_VERSION", None)


def compose(*args: str, env: dict | None = None, check: bool = True, timeout: float = 900) -> str:
    done = subprocess.run(
        ["docker", "compose", "-p", PROJECT, *args],
        cwd=ROOT,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def container_logs(container: str) -> str:
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def replicas(state: str = "running") -> list[str]:
    """Container ids of the `server` service in the given state."""
    out = compose("ps", "-q", "--status", state, "server")
    return sorted(out.split())


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container))[0]


def _timestamp(text: str) -> float:
    # Docker writes nanoseconds; Python parses microseconds.
    text = text.rstrip("Z")
    head, _, frac = text.partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def replica_metrics(container: str) -> str:
    """A replica's own /metrics, read from inside its container (its port is not published)."""
    script = (
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    )
    return docker("exec", container, "python3", "-c", script)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or line.split("{")[0].split(" ")[0] != name:
            continue
        sample, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


def served_version(container: str) -> str:
    for line in replica_metrics(container).splitlines():
        if line.startswith("mnist_serving_model_info{") and f'model="{MODEL_NAME}"' in line:
            found = re.search(r'[{,]version="([^"]*)"', line)
            return found.group(1) if found else ""
    return ""


class Callers:
    """Callers sending single images through `lb` until stopped; counts what happened.

    ``count`` concurrent callers, each with its own channel, as asyncio tasks on one event
    loop in one background thread (grpc.aio): what a service calling through `lb` does.
    """

    def __init__(self, images: np.ndarray, count: int = 8, retries: int = 8) -> None:
        self.images = images
        self.count = count
        self.retries = retries
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: Counter[str] = Counter()
        self.retried = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run_all()), daemon=True)

    async def _run_all(self) -> None:
        await asyncio.gather(*(self._run(i) for i in range(self.count)))

    async def _run(self, index: int) -> None:
        client = AsyncClient(f"127.0.0.1:{LB_PORT}", retries=self.retries, backoff=0.05, timeout=20)
        async with client:
            i = index
            while not self.stop_event.is_set():
                try:
                    await client.classify(self.images[i % len(self.images)])
                    with self.lock:
                        self.ok += 1
                except ClassifyError as exc:
                    with self.lock:
                        self.failed[exc.code] += 1
                    await asyncio.sleep(0)  # refused at once: let the other callers run
                i += self.count
            with self.lock:
                self.retried += client.retries_made

    def __enter__(self) -> Callers:
        self.thread.start()
        return self

    def wait_calls(self, n: int, timeout: float = 60) -> None:
        """Block until at least n more calls have been answered (the load is really on)."""
        with self.lock:
            target = self.ok + n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.ok >= target:
                    return
            self.stop_event.wait(0.05)
        raise AssertionError(f"load stalled: {self.summary()}")

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=120)

    def summary(self) -> dict:
        with self.lock:
            return {
                "calls": self.ok + sum(self.failed.values()),
                "ok": self.ok,
                "failed": dict(self.failed),
                "retries": self.retried,
            }


@pytest.fixture(scope="module")
def stack():
    """Images built (offline path when Docker Hub is unreachable), then `up -d` on empty volumes."""
    compose("down", "-v", "--remove-orphans", check=False)
    started = time.monotonic()
    done = subprocess.run(
        ["docker/images.sh"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1800, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    REPORT["images_seconds"] = round(time.monotonic() - started, 1)
    try:
        yield
    finally:
        report = Path(
            os.environ.get("MNIST_SERVING_COMPOSE_REPORT", ROOT / "bench" / "results" / "compose.json")
        )
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(REPORT, indent=2))
        print(json.dumps(REPORT, indent=2))
        # Whatever happened above: nothing of this run is left behind.
        compose("--profile", "monitoring", "down", "-v", "--remove-orphans", check=False)
        built = [f"mnist-serving-{name}:{TAG}" for name in ("trainer", "server", "lb", "prometheus")]
        docker("image", "rm", "-f", *built, check=False)
        # Layers left untagged by rebuilds of the compose images (not the stand-in bases,
        # which later runs reuse).
        docker(
            "image", "prune", "-f", "--filter", "label=com.docker.compose.project=mnist-serving", check=False
        )


def test_1_up_trains_exports_and_serves_the_model_accuracy(stack, mnist):
    started = time.time()
    compose("up", "-d")
    REPORT["up_seconds"] = round(time.time() - started, 1)
    jobs = {name: inspect(compose("ps", "-aq", name).split()[0]) for name in ("train", "export")}
    for name, job in jobs.items():
        assert job["State"]["ExitCode"] == 0, compose("logs", name)
    running = replicas()
    assert len(running) == 3
    healthy_at = []
    for container in running:
        state = inspect(container)["State"]
        assert state["Health"]["Status"] == "healthy"
        passed = [_timestamp(e["End"]) for e in state["Health"]["Log"] if e["ExitCode"] == 0]
        healthy_at.append(min(passed) if passed else time.time())
    REPORT["first_healthy_replica_seconds"] = round(min(healthy_at) - started, 1)
    REPORT["training_log_tail"] = compose("logs", "--no-log-prefix", "train").strip().splitlines()[-3:]

    sidecar = json.loads(docker("exec", running[0], "cat", f"/models/{MODEL_NAME}/1/model.json"))
    with Client(f"127.0.0.1:{LB_PORT}", retries=5) as client:
        result = client.classify_batch(mnist.x_test)
    accuracy = float((result.labels == mnist.y_test).mean())
    REPORT["lb_test_accuracy"] = accuracy
    assert result.model_version == "1"
    assert accuracy == pytest.approx(sidecar["test_accuracy"], abs=1e-9)
    assert accuracy > 0.9

    # REST through the same balancer: v2 JSON infer answers as gRPC did; the page is served.
    images = mnist.x_test[:200]
    tensor = {"name": "image", "shape": list(images.shape), "datatype": "UINT8", "data": images.tolist()}
    request = urllib.request.Request(
        f"http://127.0.0.1:{LB_HTTP_PORT}/v2/models/{MODEL_NAME}/infer",
        data=json.dumps({"inputs": [tensor]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    labels = next(o["data"] for o in answer["outputs"] if o["name"] == "label")
    assert labels == result.labels[:200].tolist() and answer["model_version"] == "1"
    with urllib.request.urlopen(f"http://127.0.0.1:{LB_HTTP_PORT}/", timeout=30) as response:
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert b"Draw a digit" in response.read()
    REPORT["rest_through_lb"] = "ok"


def test_2_scaling_reaches_new_replicas_without_restarting_lb(stack, mnist):
    lb = compose("ps", "-q", "lb").split()[0]
    lb_started = inspect(lb)["State"]["StartedAt"]
    with Callers(mnist.x_test[:500]) as load:
        load.wait_calls(200)
        scaled_at = time.monotonic()
        compose("up", "-d", "--scale", "server=5")
        running = wait_until(lambda: (r := replicas()) and len(r) == 5 and r, 60, "5 running replicas")
        baseline = {c: metric(replica_metrics(c), "mnist_serving_images_classified_total") for c in running}

        def all_receive():
            now = {c: metric(replica_metrics(c), "mnist_serving_images_classified_total") for c in running}
            return all(now[c] > baseline[c] for c in running) and now

        # A generous limit, not a speed: the time it took is a figure in the report (docs/deploy.md).
        wait_until(all_receive, 120, "every replica to receive calls through lb")
        REPORT["scale_up_to_all_replicas_seconds"] = round(time.monotonic() - scaled_at, 1)
        load.wait_calls(200)
        compose("up", "-d", "--scale", "server=3")
        wait_until(lambda: len(replicas()) == 3, 60, "3 running replicas")
        load.wait_calls(200)
    summary = load.summary()
    REPORT["scale_5_then_3"] = summary
    assert inspect(lb)["State"]["StartedAt"] == lb_started, "lb was restarted"
    assert summary["failed"] == {}, summary


def one_replica_under_load(action: str, report_key: str, images: np.ndarray) -> str:
    """`docker <action>` one replica while 8 callers (with retries) keep sending; no call fails."""
    with Callers(images) as load:
        load.wait_calls(300)
        victim = replicas()[0]
        docker(action, victim)
        load.wait_calls(1000)
    summary = load.summary()
    REPORT[report_key] = summary
    assert summary["failed"] == {}, summary
    return victim


def test_3_killed_replica_loses_no_call_with_client_retries(stack, mnist):
    one_replica_under_load("kill", "kill_one_replica", mnist.x_test[:500])
    compose("up", "-d", "--scale", "server=3")
    wait_until(lambda: len(replicas()) == 3, 60, "3 running replicas again")


def test_4_hot_reload_to_version_2_under_load(stack, mnist):
    new_version = {**ENV, "MNIST_SERVING_NEW_VERSION": "1"}
    with Callers(mnist.x_test[:500]) as load:
        load.wait_calls(200)
        compose("run", "--rm", "--no-deps", "train", env=new_version)
        compose("run", "--rm", "--no-deps", "export", env=new_version)
        published = time.monotonic()
        running = replicas()
        wait_until(
            lambda: all(served_version(c) == "2" for c in running),
            POLL_INTERVAL + 60,
            "every replica to serve version 2",
        )
        REPORT["hot_reload_all_replicas_seconds"] = round(time.monotonic() - published, 1)
        load.wait_calls(200)
    summary = load.summary()
    REPORT["hot_reload"] = summary
    assert summary["failed"] == {}, summary
    with Client(f"127.0.0.1:{LB_PORT}") as client:
        assert client.classify(mnist.x_test[0]).model_version == "2"


def healthy_replicas(count: int) -> list[str] | None:
    running = replicas()
    healthy = [c for c in running if inspect(c)["State"].get("Health", {}).get("Status") == "healthy"]
    return healthy if len(running) == count and len(healthy) == count else None


def test_5_a_token_in_the_env_file_is_enforced_through_lb(stack, mnist, tmp_path):
    """`.env` (here the file MNIST_SERVING_ENV_FILE names) reaches every replica: a token set
    there is required of every call through the balancer."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("MNIST_SERVING_AUTH_TOKEN=compose-secret\n")
    with_token = {**ENV, "MNIST_SERVING_ENV_FILE": str(env_file)}
    try:
        compose("up", "-d", "--scale", "server=3", env=with_token)
        wait_until(lambda: healthy_replicas(3), 120, "3 healthy replicas with the token")
        refused = Counter()
        with Client(f"127.0.0.1:{LB_PORT}", retries=0) as client:
            for image in mnist.x_test[:30]:  # spread over every replica by lb
                try:
                    client.classify(image)
                    refused["OK"] += 1
                except ClassifyError as exc:
                    refused[exc.code] += 1
        with Client(f"127.0.0.1:{LB_PORT}", token="compose-secret") as client:
            answered = [client.classify(image).label for image in mnist.x_test[:30]]
        REPORT["env_file_token"] = {"without_token": dict(refused), "with_token_answered": len(answered)}
        assert refused == {"UNAUTHENTICATED": 30}, refused
        assert len(answered) == 30
    finally:  # the later steps run without a token, as before
        compose("up", "-d", "--scale", "server=3")
        wait_until(lambda: healthy_replicas(3), 120, "3 healthy replicas without the token")


def test_6_monitoring_profile_scrapes_every_replica(stack):
    compose("--profile", "monitoring", "up", "-d", "prometheus")
    expected = set(replicas())
    addresses = {
        next(iter(inspect(c)["NetworkSettings"]["Networks"].values()))["IPAddress"] + ":8000"
        for c in expected
    }

    def targets_up():
        url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                data = json.loads(response.read())
        except OSError:
            return None
        up = {
            t["labels"]["instance"]
            for t in data["data"]["activeTargets"]
            if t["labels"]["job"] == "mnist-serving" and t["health"] == "up"
        }
        return addresses <= up and up

    started = time.monotonic()
    wait_until(targets_up, 120, "Prometheus to report every replica up", interval=1)
    REPORT["prometheus_all_targets_up_seconds"] = round(time.monotonic() - started, 1)


def test_7_graceful_stops(stack, mnist):
    # One replica stopped under load: lb and the client's retries move calls to the others.
    victim = one_replica_under_load("stop", "stop_one_replica", mnist.x_test[:500])
    assert inspect(victim)["State"]["ExitCode"] == 0

    # The whole service stopped under load, callers without retries: every call is answered,
    # or refused UNAVAILABLE (draining, or no replica left); none is cut off with another status.
    compose("up", "-d", "--scale", "server=3")
    wait_until(lambda: len(replicas()) == 3, 60, "3 running replicas")
    stopping = replicas()
    with Callers(mnist.x_test[:500], retries=0) as load:
        load.wait_calls(300)
        compose("stop", "server")
        wait_until(lambda: load.summary()["failed"].get("UNAVAILABLE", 0) > 20, 60, "calls refused")
    summary = load.summary()
    REPORT["compose_stop_server"] = summary
    assert set(summary["failed"]) <= {"UNAVAILABLE"}, summary
    for container in stopping:
        state = inspect(container)["State"]
        logs = container_logs(container)
        assert state["ExitCode"] == 0, logs[-2000:]
        assert "calls unanswered" not in logs, logs[-2000:]


def test_8_down_leaves_nothing_running(stack):
    compose("--profile", "monitoring", "down", "-v", "--remove-orphans")
    left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}")
    assert left.split() == []
    volumes = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}")
    assert volumes.split() == []
