"""One benchmark sitting: the in-process ceiling, mnist-serve, and the peers, same machine.

    python bench/run.py            # full (several minutes); writes docs/benchmarks.md + plots
    python bench/run.py --quick    # seconds; what CI runs to prove the harness works

Peers (MLServer, Triton via PyTriton) run from their own virtual environments, made by
bench/peers/setup.sh; a peer whose environment is missing is skipped and said so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import ceiling  # noqa: E402
import h2load_run  # noqa: E402
import heavy_batch  # noqa: E402
import loadgen_own  # noqa: E402

from mnist_serving.common import model_repository  # noqa: E402
from mnist_serving.common.contract import MODEL_NAME  # noqa: E402
from mnist_serving.common.mnist_data import load_mnist  # noqa: E402
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2  # noqa: E402
from mnist_serving.protos.gen.inference import grpc_service_pb2_grpc as v2_grpc  # noqa: E402

OURS = "mnist-serving"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    env: dict = field(default_factory=dict)
    cwd: Path | None = None
    own_api: bool = False
    floor: bool = False  # the bare Python gRPC floor: ModelInfer only, measured with h2load
    http_port: int | None = None  # its REST port, where it has one
    process: subprocess.Popen | None = None

    def start(self, log: Path) -> None:
        self.log = log.open("w")
        self.process = subprocess.Popen(
            self.command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        # mnist-serve --workers N: each worker prints "serving gRPC on" once it serves.
        workers = int(self.command[self.command.index("--workers") + 1]) if "--workers" in self.command else 1
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited; see {log}")
                try:
                    ready = stub.ModelReady(v2.ModelReadyRequest(name=MODEL_NAME), timeout=2).ready
                    # Every worker on the port, or the first connections all land on one of them.
                    if ready and (workers == 1 or log.read_text().count("serving gRPC on") >= workers):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)  # a readiness poll, not a wait for anything
        raise RuntimeError(f"{self.name} not ready in time; see {log}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
        self.log.close()


def servers(model: Path, peers: list[str], quick: bool = False) -> list[Server]:
    bin_dir = Path(sys.executable).parent
    repo = model.parent.parent.parent
    found = []
    for name, extra in (
        (OURS, []),
        ("mnist-serving (batching off)", ["--batching", "false"]),
        ("mnist-serving (2 workers)", ["--workers", "2"]),
    ):
        port, http_port = free_port(), free_port()
        found.append(
            Server(
                name,
                [
                    str(bin_dir / "mnist-serve"),
                    "--model-repository",
                    str(repo),
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--metrics-port",
                    "-1",
                    "--http-port",  # REST on, as by default: the targets hold with it
                    str(http_port),
                    "--poll-interval",
                    "0",
                    "--log-level",
                    "WARNING",
                    *extra,
                ],
                port,
                own_api=True,
                http_port=http_port,
            )
        )
        if quick:
            break
    for processes in (1, 2):
        port = free_port()
        found.append(
            Server(
                f"floor ({processes} process{'es' if processes > 1 else ''})",
                [
                    sys.executable,
                    str(HERE / "floor_server.py"),
                    str(model),
                    "--port",
                    str(port),
                    "--processes",
                    str(processes),
                ],
                port,
                floor=True,
            )
        )
        if quick:
            break
    venvs = HERE / ".venvs"
    if "mlserver" in peers and (venvs / "mlserver" / "bin" / "mlserver").exists():
        port, http_port = free_port(), free_port()
        workdir = Path(tempfile.mkdtemp(prefix="mlserver-"))
        (workdir / "settings.json").write_text(
            json.dumps(
                {
                    "parallel_workers": 0,
                    "grpc_port": port,
                    "http_port": http_port,
                    "metrics_port": free_port(),
                    "debug": False,
                }
            )
        )
        (workdir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": MODEL_NAME,
                    "implementation": "mlserver_runtime.OnnxMnist",
                    "parameters": {"uri": str(model)},
                }
            )
        )
        (workdir / "mlserver_runtime.py").write_text((HERE / "peers" / "mlserver_runtime.py").read_text())
        found.append(
            Server(
                "MLServer 1.7.1",
                [str(venvs / "mlserver" / "bin" / "mlserver"), "start", str(workdir)],
                port,
                env={"PYTHONPATH": str(workdir)},
                cwd=workdir,
                http_port=http_port,
            )
        )
    if "pytriton" in peers and (venvs / "pytriton" / "bin" / "python").exists():
        port = free_port()
        libdir = subprocess.run(
            [
                str(venvs / "pytriton" / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        found.append(
            Server(
                "Triton 2.51 (PyTriton 0.7.0)",
                [
                    str(venvs / "pytriton" / "bin" / "python"),
                    str(HERE / "peers" / "pytriton_server.py"),
                    str(model),
                    str(port),
                    str(free_port()),
                    str(free_port()),
                ],
                port,
                env={"LD_LIBRARY_PATH": libdir},
            )
        )
    return found


def loadgen_v2_command(address: str, concurrency: int, batch: int, seconds: float, data: dict) -> list[str]:
    """Triton's client closed-loop (``loadgen_v2.py``), as a command to run."""
    return [
        sys.executable,
        str(HERE / "loadgen_v2.py"),
        address,
        str(concurrency),
        str(batch),
        str(seconds),
        data["images"],
        data["labels"],
    ]


def run_v2(address: str, concurrency: int, batch: int, seconds: float, data: dict) -> dict:
    done = subprocess.run(
        loadgen_v2_command(address, concurrency, batch, seconds, data),
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout)


def test_set_files(model: Path, prefix: str) -> tuple:
    """The test set and the model's own labels as .npy files (for the load generators), and one
    framed single-image ModelInfer request (for h2load), in a new directory:
    (mnist, the directory, {"images", "labels"} paths, the request file)."""
    mnist = load_mnist()
    labels = ort.InferenceSession(str(model)).run(["label"], {"image": mnist.x_test})[0]
    work = Path(tempfile.mkdtemp(prefix=prefix))
    np.save(work / "images.npy", mnist.x_test)
    np.save(work / "labels.npy", labels)
    data = {"images": str(work / "images.npy"), "labels": str(work / "labels.npy")}
    body = work / "request.bin"
    body.write_bytes(h2load_run.request_bytes(mnist.x_test[:1]))
    return mnist, work, data, body


def sitting(args: argparse.Namespace) -> dict:
    model = args.model or model_repository.published_model(ROOT / "models", MODEL_NAME)
    if model is None:
        raise SystemExit("no published model: run `make run` (or mnist-train && mnist-export) first")
    model = Path(model).resolve()
    mnist, tmp, data, body = test_set_files(model, "bench-")
    labels = np.load(data["labels"])
    d = args.seconds
    singles = (1, 16) if args.quick else (1, 16, 64, 256)
    batches = (1,) if args.quick else (1, 4)
    results = {
        "machine": machine(),
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
        "seconds_per_run": d,
        "ceiling": [],
        "servers": {},
    }
    for threads in (1, 2):
        results["ceiling"] += ceiling.measure(str(model), threads, seconds=min(d, 2.0))
    # Quick: the floor runs in the targets' round only (proving the harness, not measuring).
    for server in [s for s in servers(model, args.peers, args.quick) if not (args.quick and s.floor)]:
        print(f"== {server.name}", flush=True)
        server.start(tmp / f"{server.name.split()[0]}-{server.port}.log")
        address = f"127.0.0.1:{server.port}"
        rows = {}
        try:
            rows["h2load 1x1"] = h2load_run.run(server.port, body, d, 1, 1, tmp / "h2-1.log")
            rows["h2load 16x4"] = h2load_run.run(server.port, body, d, 16, 4, tmp / "h2-64.log")
            for c in () if server.floor else singles:
                rows[f"v2 single c={c}"] = run_v2(address, c, 1, d, data)
            for c in () if server.floor else batches:
                rows[f"v2 batch256 c={c}"] = run_v2(address, c, 256, d, data)
            if server.own_api:
                for c in singles:
                    rows[f"own single c={c}"] = asyncio.run(
                        loadgen_own.closed_loop(address, c, 1, d, mnist.x_test, labels)
                    )
                for c in batches:
                    rows[f"own batch256 c={c}"] = asyncio.run(
                        loadgen_own.closed_loop(address, c, 256, d, mnist.x_test, labels)
                    )
                rows["own stream test set"] = asyncio.run(
                    loadgen_own.stream_test_set(address, mnist.x_test, labels)
                )
            if server.name == OURS:
                rows["heavy batches"] = asyncio.run(
                    heavy_batch.scenario(address, 3 * d, 200 if args.quick else 2000)
                )
            check = answer_check(address, mnist.x_test[:1], labels[:1])
            rows["h2load answer check"] = {"ok": check}
        finally:
            server.stop()
        for key, row in rows.items():
            print(f"   {key}: {json.dumps(row)}", flush=True)
        results["servers"][server.name] = rows
    results["targets"] = target_rounds(model, body, data, tmp, args)
    if not args.quick or args.with_training:
        results["training"] = training_speed(args)
    return results


TARGET_SERVERS = (OURS, f"{OURS} (2 workers)", "floor (1 process)", "floor (2 processes)")


def target_rounds(model: Path, body: Path, data: dict, tmp: Path, args: argparse.Namespace) -> dict:
    """The targets' figures in interleaved rounds, every server up at once.

    Each ratio is taken within one round (seconds apart), and the report reads the median
    round: measured minutes apart, this machine moved the floor alone by up to 38%.
    """
    chosen = [s for s in servers(model, [], args.quick) if s.name in TARGET_SERVERS]
    print(f"== targets: {args.rounds} interleaved rounds of {', '.join(s.name for s in chosen)}", flush=True)
    rounds = []
    started = []
    try:
        for server in chosen:
            server.start(tmp / f"targets-{server.port}.log")
            started.append(server)
        for _ in range(args.rounds):
            row: dict = {}
            for server in chosen:
                row[f"{server.name} h2load 16x4"] = h2load_run.run(
                    server.port, body, args.seconds, 16, 4, tmp / "targets-h2.log"
                )["requests_per_s"]
                if server.name in (OURS, "floor (1 process)"):
                    row[f"{server.name} h2load 1x1 p50_ms"] = h2load_run.run(
                        server.port, body, args.seconds, 1, 1, tmp / "targets-h2.log"
                    ).get("p50_ms")
                if server.name == OURS:
                    batch = run_v2(f"127.0.0.1:{server.port}", 4, 256, args.seconds, data)
                    row[f"{OURS} v2 batch256 c=4"] = batch.get("images_per_s")
                    row["wrong answers"] = batch.get("wrong", 0) + batch.get("errors", 0)
            ceiling_row = ceiling.measure(str(model), 1, batches=(256,), seconds=min(args.seconds, 2.0))[0]
            row["in-process batch 256, 1 thread"] = ceiling_row["images_per_s"]
            print(f"   {json.dumps(row)}", flush=True)
            rounds.append(row)
    finally:
        for server in started:
            server.stop()
    return {"seconds_per_run": args.seconds, "rounds": rounds}


def answer_check(address: str, image: np.ndarray, label: np.ndarray) -> bool:
    """The h2load request, sent once through gRPC: is it answered, and rightly?"""
    request = v2.ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[image.tobytes()])
    request.inputs.add(name="image", datatype="UINT8", shape=[1, 28, 28])
    with grpc.insecure_channel(address) as channel:
        response = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    index = [o.name for o in response.outputs].index("label")
    if response.raw_output_contents:
        got = np.frombuffer(response.raw_output_contents[index], "<i8")
    else:
        got = np.array(response.outputs[index].contents.int64_contents)
    return bool(got.reshape(-1)[0] == label[0])


def training_speed(args: argparse.Namespace) -> dict:
    """Seconds per epoch and images/s of the default recipe (a short real run)."""
    epochs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run(
            [
                str(Path(sys.executable).parent / "mnist-train"),
                "--run-dir",
                run_dir,
                "--epochs",
                str(epochs),
                "--no-progress",
            ],
            capture_output=True,
            check=True,
        )
        report = json.loads((Path(run_dir) / "summary.json").read_text())
    return {
        "epochs": epochs,
        "seconds_per_epoch": report["seconds_per_epoch"],
        "images_per_second": report["images_per_second"],
    }


def machine() -> dict:
    import grpc as grpc_module

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "grpcio": grpc_module.__version__,
        "numpy": np.__version__,
        "python_libdir": sysconfig.get_config_var("LIBDIR"),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny setting: proves the harness runs")
    parser.add_argument("--seconds", type=float, help="seconds per load run (default 5, quick 0.5)")
    parser.add_argument("--model", type=Path, help="model.onnx (default: newest models/mnist/<v>/)")
    parser.add_argument("--peers", default="mlserver,pytriton", help="comma-separated peers to include")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--docs", type=Path, help="write the markdown report and plots here (full runs)")
    parser.add_argument("--with-training", action="store_true", help="also time training in --quick mode")
    parser.add_argument("--rounds", type=int, help="interleaved rounds for the targets (default 5, quick 1)")
    args = parser.parse_args()
    args.seconds = args.seconds or (0.5 if args.quick else 5.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.peers = [p for p in args.peers.split(",") if p]
    results = sitting(args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(f"results: {args.results}")
    if args.docs:
        import report

        report.write(results, args.docs)
        print(f"report: {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
