"""Deployment files, validated statically, and the load balancer run for real on loopback."""

import re
import shutil
import socket
import string
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest
import yaml

from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.server_process import ServerProcess

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
TEMPLATE = ROOT / "deploy" / "nginx" / "grpc-lb.conf.template"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


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
    assert set(services) == {"train", "export", "server", "lb", "server-gpu", "prometheus"}
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
        assert service["restart"] == "unless-stopped"
        assert all(key.startswith("MNIST_SERVING_") for key in service["environment"])
    assert (
        "models:/models" in services["train"]["volumes"] and "models:/models" in services["export"]["volumes"]
    )
    assert services["server"]["deploy"]["resources"]["limits"]
    gpu = services["server-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = {n for job in prometheus["scrape_configs"] for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert scraped == {"server", "server-gpu"}


def _entrypoint(dockerfile: Path) -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
    return yaml.safe_load(match.group(1)) if match else []


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
    files = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    done = subprocess.run([tool("hadolint"), *files], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_data_and_environments_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "models", "runs", ".git", "*.npz"} <= ignored


def test_kubernetes_manifests_validate():
    manifests = sorted(
        str(p) for p in (ROOT / "deploy" / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *manifests], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(Path(m).name for m in manifests)
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert all(
        container[p]["grpc"]["port"] == 50051 for p in ("readinessProbe", "livenessProbe", "startupProbe")
    )
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


# --- nginx, for real --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_nginx(directory: Path, upstreams: list[str], port: int) -> Path:
    """The compose template, rendered as nginx's envsubst would, in a minimal nginx.conf."""
    servers = " ".join(f"server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
    site = string.Template(TEMPLATE.read_text()).substitute(LB_UPSTREAM_SERVERS=servers, LB_LISTEN_PORT=port)
    (directory / "site.conf").write_text(site)
    conf = directory / "nginx.conf"
    conf.write_text(f"""
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/site.conf;
}}
""")
    return conf


needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")


@needs_nginx
def test_nginx_config_passes_nginx_t(tmp_path):
    conf = render_nginx(tmp_path, ["127.0.0.1:50051", "127.0.0.1:50052"], _free_port())
    done = subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@needs_nginx
def test_nginx_spreads_one_connection_over_replicas_and_survives_one_stopping(
    model_repository, mnist, tmp_path
):
    replicas = [ServerProcess(model_repository, log_path=tmp_path / f"server{i}.log") for i in range(2)]
    nginx = None
    try:
        for replica in replicas:
            replica.wait_serving()
        port = _free_port()
        conf = render_nginx(tmp_path, [r.address for r in replicas], port)
        nginx = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
            text=True,
        )
        before = [r.metric("mnist_serving_images_classified_total") for r in replicas]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # ONE client connection
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb_grpc.ClassifierStub(channel)
            request = pb.ClassifyRequest(image=pb.Image(raw=mnist.x_test[0].tobytes()))
            for _ in range(40):
                for attempt in range(50):  # nginx may still be binding: UNAVAILABLE until it listens
                    try:
                        assert stub.Classify(request, timeout=10).prediction.label == 7
                        break
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < 49
            served = [
                r.metric("mnist_serving_images_classified_total") - b
                for r, b in zip(replicas, before, strict=True)
            ]
            assert all(s >= 10 for s in served), served  # both replicas answered calls of one connection
            assert replicas[0].stop() == 0
            for _ in range(30):  # the other replica takes every call
                assert stub.Classify(request, timeout=10).prediction.label == 7
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=30)
        for replica in replicas:
            replica.stop()
