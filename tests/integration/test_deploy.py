"""Deployment files, validated statically, and the load balancer run for real on loopback."""

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.helpers import free_port

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def tool(name):
    return str(BIN / name)


def test_compose_file_validates_against_the_compose_specification():
    done = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_wiring():
    services = COMPOSE["services"]
    assert set(services) == {"train", "export", "server", "lb", "server-gpu", "prometheus", "jaeger"}
    assert services["export"]["depends_on"] == {"train": {"condition": "service_completed_successfully"}}
    assert services["server"]["depends_on"] == {"export": {"condition": "service_completed_successfully"}}
    assert services["lb"]["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert services["server-gpu"]["profiles"] == ["gpu"] and services["prometheus"]["profiles"] == [
        "monitoring"
    ]
    assert "profiles" not in services["server"] and "profiles" not in services["train"]
    assert set(COMPOSE["volumes"]) == {"models", "runs", "mnist-cache"}
    for name in ("server", "server-gpu"):
        service = services[name]
        assert service["volumes"] == ["models:/models:ro"] and service["read_only"] is True
        assert service["healthcheck"]["test"][:3] == ["CMD", "mnist-classify", "health"]
        # Crashes restart; a configuration error (exit 2 before binding) is not retried forever.
        assert service["restart"] == "on-failure:3"
        assert all(key.startswith(("MNIST_SERVING_", "OTEL_")) for key in service["environment"])
    assert (
        "models:/models" in services["train"]["volumes"] and "models:/models" in services["export"]["volumes"]
    )
    assert services["server"]["deploy"]["resources"]["limits"]
    gpu = services["server-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = {
        n for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]
    }
    assert scraped == {"server", "server-gpu"}
    # Every built image takes its base image as a build argument (registry mirrors, offline).
    for name, service in services.items():
        if "build" in service:
            dockerfile = (ROOT / service["build"]["dockerfile"]).read_text()
            base_args = re.findall(r"^FROM \$\{([A-Z_]+)\}", dockerfile, re.MULTILINE)
            assert base_args, f"{name}: FROM must name its base through an ARG"
            assert set(base_args) <= set(service["build"].get("args", {})), name
            assert "# syntax=" not in dockerfile  # BuildKit would fetch a frontend from Docker Hub
    # The one-shot jobs and the images can write their fresh volumes: mount points exist,
    # owned by the user they run as.
    for dockerfile in ("trainer.Dockerfile", "server.Dockerfile"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert "chown 10001:10001 /models" in text and "USER 10001" in text


def test_tracing_profile_wiring():
    """The `tracing` profile cannot run offline (no tracing backend builds from Debian
    packages); its wiring is checked here, the export itself in test_tracing.py."""
    from mnist_serving.server import tracing

    services = COMPOSE["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"] and jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert re.fullmatch(r"\$\{MNIST_SERVING_JAEGER_IMAGE:-jaegertracing/all-in-one:[\d.]+\}", jaeger["image"])
    for name in ("server", "server-gpu"):
        environment = services[name]["environment"]
        endpoint = urllib.parse.urlsplit(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.hostname == "jaeger" and str(endpoint.port) in jaeger["expose"]
        assert environment["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"

        def resolved(value: str, env: dict) -> str:
            return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), value)

        off = {k: resolved(v, {}) for k, v in environment.items()}
        on = {k: resolved(v, {"MNIST_SERVING_TRACES": "otlp"}) for k, v in environment.items()}
        assert not tracing.configured(off) and tracing.configured(on)
        assert float(off["OTEL_TRACES_SAMPLER_ARG"]) == 0.01


def _entrypoint(dockerfile: Path) -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
    return yaml.safe_load(match.group(1)) if match else []


@pytest.mark.xdist_group("torch")  # imports the training and export CLIs
def test_every_command_is_a_real_console_script_with_valid_arguments():
    from mnist_serving.export.cli import parse_args as export_args
    from mnist_serving.server.config import load_config
    from mnist_serving.train.cli import parse_args as train_args

    services = COMPOSE["services"]
    for name, parse in (("train", train_args), ("export", export_args)):
        command = services[name]["command"]
        assert command[0] in SCRIPTS
        parse(command[1:])  # exits on an unknown flag
    for name in ("server", "server-gpu"):
        dockerfile = ROOT / services[name]["build"]["dockerfile"]
        entrypoint = _entrypoint(dockerfile)
        assert entrypoint == ["mnist-serve"] and entrypoint[0] in SCRIPTS
        load_config(services[name]["command"], environ={})
        health = services[name]["healthcheck"]["test"][1:]
        assert health[0] in SCRIPTS
    # The HEALTHCHECK in each image is the same gRPC health call.
    for dockerfile in (ROOT / "docker").glob("server*.Dockerfile"):
        assert '"mnist-classify", "health"' in dockerfile.read_text()


def _extras(dockerfile: Path) -> set[str]:
    found = set()
    for group in re.findall(r"\.\[([a-z0-9,\-]+)\]|mnist-serving\[([a-z0-9,\-]+)\]", dockerfile.read_text()):
        for part in group:
            found.update(p for p in part.split(",") if p)
    return found


def test_server_images_carry_no_torch():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for image in ("server.Dockerfile", "server-gpu.Dockerfile"):
        text = (ROOT / "docker" / image).read_text()
        names = _extras(ROOT / "docker" / image)
        assert names and names <= {"serve", "serve-gpu", "client"}, names
        requirements = [r for n in names for r in extras[n]] + PYPROJECT["project"]["dependencies"]
        assert not [r for r in requirements if r.lower().startswith(("torch", "mnist-serving[train"))]
        instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in instructions if "torch" in line]
        assert re.search(r"^USER 10001$", text, re.MULTILINE)  # non-root
    assert "torch==2.13.0" in (ROOT / "docker" / "trainer.Dockerfile").read_text()


def test_dockerfiles_pass_hadolint():
    files = sorted(str(p) for p in (ROOT / "docker").rglob("*.Dockerfile"))
    done = subprocess.run([tool("hadolint"), *files], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_data_and_environments_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "models", "runs", ".git", "*.npz"} <= ignored


K8S = ROOT / "deploy" / "k8s"


def _k8s(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def test_kubernetes_manifests_validate():
    """What `kubectl apply -k deploy/k8s/` applies, validated against Kubernetes' schemas
    (no cluster is needed, or available, to run them)."""
    manifests = sorted(str(p) for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *manifests], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kustomization = _k8s("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(Path(m).name for m in manifests)
    for manifest in manifests:  # kustomize's parser: no YAML anchors or aliases
        assert not re.search(r"(:|-) [&*][a-z]", Path(manifest).read_text()), manifest


@pytest.mark.xdist_group("torch")  # imports the training and export CLIs
def test_kubernetes_ports_probes_and_images_match_the_code():
    from mnist_serving.common import __version__
    from mnist_serving.export.cli import parse_args as export_args
    from mnist_serving.server.config import ServerConfig, load_config
    from mnist_serving.train.cli import parse_args as train_args

    pod = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {
        "grpc": ServerConfig.port,
        "http": ServerConfig.http_port,
        "metrics": ServerConfig.metrics_port,
    }
    assert server["startupProbe"]["grpc"]["port"] == server["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    # Every flag and variable the pod sets is one the server takes.
    config = load_config(server["args"], environ={e["name"]: e["value"] for e in server["env"]})
    assert config.grace < pod["terminationGracePeriodSeconds"] and config.max_connection_age > 0
    # The CPU limit is what the automatic sizes read (a whole CPU: one decode process).
    assert server["resources"]["limits"]["cpu"] == "1"
    # Services route to the container's named ports, gRPC, REST and metrics alike.
    for name in ("service.yaml", "service-headless.yaml"):
        service = _k8s(name)["spec"]
        assert service["selector"] == _k8s("deployment.yaml")["spec"]["selector"]["matchLabels"]
        routed = {p["name"]: (p["port"], p["targetPort"]) for p in service["ports"]}
        assert routed["grpc"] == (ports["grpc"], "grpc") and routed["http"] == (ports["http"], "http")
    # Images: the names and tag compose builds (`docker/images.sh` builds compose's services).
    built = {s["image"].split(":")[0]: s["image"] for s in COMPOSE["services"].values() if "image" in s}
    job = _k8s("job-publish-model.yaml")["spec"]["template"]["spec"]
    for container in [*pod["initContainers"], server, *job["initContainers"], *job["containers"]]:
        name, tag = container["image"].split(":")
        assert name in built, container["image"]
        assert tag == __version__ and built[name].endswith(f":${{MNIST_SERVING_IMAGE_TAG:-{__version__}}}")
    # The Job runs the same commands as compose's train and export services.
    steps = {c["name"]: c["command"] for c in [*job["initContainers"], *job["containers"]]}
    assert steps == {
        "train": COMPOSE["services"]["train"]["command"],
        "export": COMPOSE["services"]["export"]["command"],
    }
    train_args(steps["train"][1:])
    export_args(steps["export"][1:])
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in [*pod["volumes"], *job["volumes"]]
        if "persistentVolumeClaim" in v
    }
    assert claims == {_k8s("pvc.yaml")["metadata"]["name"]}


# --- HAProxy, for real ------------------------------------------------------------------
# The shipped config, with its DNS server template replaced by the loopback replicas: the
# balancing, retries and /ready checks are exactly what the compose `lb` service runs.


def render_haproxy(directory: Path, replicas: list, port: int, http_port: int | None = None) -> Path:
    text = HAPROXY_CFG.read_text()
    templates = re.findall(r"^\s*server-template .*$", text, re.MULTILINE)
    assert len(templates) == 2, "haproxy.cfg needs a server-template for gRPC and one for REST"
    for template in templates:
        # Literal loopback addresses (nothing to resolve), each with its own metrics port.
        rest = "LB_HTTP_PORT" in template
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{r.http_port if rest else r.port} "
            f"port {r.metrics_port} init-addr libc"
            for i, r in enumerate(replicas)
        )
        text = text.replace(template, servers)
    text = text.replace("bind :50051", f"bind 127.0.0.1:{port}")
    text = text.replace("bind :8080", f"bind 127.0.0.1:{http_port or free_port()}")
    text = text.replace("bind :8404", f"bind 127.0.0.1:{free_port()}")
    conf = directory / "haproxy.cfg"
    conf.write_text(text)
    return conf


def _haproxy_env() -> dict:
    import os

    return {
        **os.environ,
        "LB_CHECK_PORT": "8000",
        "LB_MAX_REPLICAS": "4",
        "LB_SERVER_NAME": "server",
        "LB_GRPC_PORT": "50051",
        "LB_HTTP_PORT": "8080",
        "LB_HEAD_TIMEOUT": "1s",
        "LB_MAX_BODY": "1048576",
    }


needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)")


@needs_haproxy
def test_shipped_haproxy_config_is_valid():
    done = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        check=False,
        env=_haproxy_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_haproxy
def test_haproxy_refuses_slow_heads_and_announced_large_bodies_itself(tmp_path):
    """Through the shipped config: a caller that never finishes its headers is closed at the
    head timeout (408), and a body announced over the cap is refused (413) before a replica
    sees it."""

    http_port = free_port()
    conf = render_haproxy(tmp_path, [], free_port(), http_port)
    haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stderr=subprocess.PIPE, env=_haproxy_env())
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", http_port), timeout=30)
                break
            except OSError:
                assert time.monotonic() < deadline and haproxy.poll() is None, "haproxy did not listen"
                time.sleep(0.05)  # polling an external process's port
        with sock:
            sock.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\nx-slow: ")
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
        with socket.create_connection(("127.0.0.1", http_port), timeout=30) as sock:
            sock.sendall(
                b"POST /v2/models/mnist/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    finally:
        haproxy.terminate()
        haproxy.wait(timeout=30)


def _ready(replica) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/ready", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@needs_haproxy
def test_haproxy_spreads_one_connection_and_a_draining_replica_loses_no_call(start_server, mnist, tmp_path):
    replicas = [start_server(wait=False) for _ in range(2)]
    haproxy = None
    try:
        for replica in replicas:
            replica.wait_serving()
        assert all(_ready(r) == 200 for r in replicas)
        port, http_port = free_port(), free_port()
        conf = render_haproxy(tmp_path, replicas, port, http_port)
        haproxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(conf)], stderr=subprocess.PIPE, text=True, env=_haproxy_env()
        )
        before = [r.metric("mnist_serving_images_classified_total") for r in replicas]
        request = pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes()))
        image = mnist.x_test[0].ravel().tolist()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # ONE client connection
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb_grpc.ClassifierStub(channel)
            deadline = time.monotonic() + 30
            # Until HAProxy's checks have passed for both (before, it answers 503 = UNAVAILABLE).
            while not all(
                r.metric("mnist_serving_images_classified_total") > b
                for r, b in zip(replicas, before, strict=True)
            ):
                try:
                    stub.Classify(request, timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "HAProxy never sent calls to both replicas"
                time.sleep(0.05)  # polling an external process's state
            before = [r.metric("mnist_serving_images_classified_total") for r in replicas]
            for _ in range(40):
                assert stub.Classify(request, timeout=10).prediction.label == 7
            served = [
                r.metric("mnist_serving_images_classified_total") - b
                for r, b in zip(replicas, before, strict=True)
            ]
            assert all(s >= 10 for s in served), served  # both replicas answered calls of one connection

            # REST through the same balancer: every replica answers v2 infer calls.
            rest = {"api": "inference.rest", "method": "ModelInfer", "code": "OK"}
            rest_before = [r.metric("mnist_serving_requests_total", **rest) for r in replicas]
            body = json.dumps(
                {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": image}]}
            ).encode()
            url = f"http://127.0.0.1:{http_port}/v2/models/mnist/infer"
            deadline = time.monotonic() + 30
            while not all(
                r.metric("mnist_serving_requests_total", **rest) - b >= 5
                for r, b in zip(replicas, rest_before, strict=True)
            ):
                assert time.monotonic() < deadline, "HAProxy never sent REST calls to both replicas"
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
                        answer = json.load(r)
                    assert next(o["data"] for o in answer["outputs"] if o["name"] == "label") == [7]
                except urllib.error.HTTPError as exc:
                    assert exc.code == 503  # before HAProxy's first checks of the REST backend

            # Calls without retries while replica 0 drains: each is answered, or refused
            # UNAVAILABLE before it started; none is cut off (CANCELLED, INTERNAL, ...).
            codes: dict[str, int] = {}
            replicas[0].process.send_signal(signal.SIGTERM)
            while replicas[0].process.poll() is None:
                try:
                    stub.Classify(request, timeout=10)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            for _ in range(30):  # the other replica takes every call
                assert stub.Classify(request, timeout=10).prediction.label == 7
        assert replicas[0].stop() == 0
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        assert codes.get("OK", 0) > 0, codes
        assert "calls unanswered" not in replicas[0].log_text()
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(timeout=30)
