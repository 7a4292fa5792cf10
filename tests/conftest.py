"""Shared fixtures: the real MNIST data (cached once) and one small real trained model."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import signal
from pathlib import Path

import pytest

from mnist_serving.common.mnist_data import Mnist, load_mnist


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background by a non-interactive shell (`cmd &`, as supervisors and
    CI wrappers do) inherits SIGINT ignored, and so would every process it starts; the tests
    that interrupt a call or a job need Ctrl-C to be delivered."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Tests keep every artefact under pytest's temporary directories, and share the data cache.
os.environ.setdefault("MNIST_SERVING_CACHE", str(Path.home() / ".cache" / "mnist-serving"))

# A default-recipe run this short already scores ≈98%: enough to check the whole pipeline.
FIXTURE_EPOCHS = 3
ROOT = Path(__file__).parents[1]
# What training and export import from common/ (tests/unit/test_packaging.py keeps it true).
FIXTURE_COMMON_MODULES = ("contract", "mnist_data", "model_repository", "idx")


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


def _fixture_key() -> str:
    """What the fixture model depends on: the training and export code, the recipe, the
    library versions. A change to any of them builds it anew."""
    digest = hashlib.sha256(f"{FIXTURE_EPOCHS}".encode())
    for package in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
    sources = [*(ROOT / "train").rglob("*.py"), *(ROOT / "export").rglob("*.py")]
    sources += [ROOT / "common" / f"{name}.py" for name in FIXTURE_COMMON_MODULES]
    for path in sorted(sources):
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory, mnist: Mnist) -> Path:
    """A real default-recipe run (few epochs) written by `mnist-train`'s own entry point, and
    its export (`mnist` and `mnist-int8` version 1, with the parity check): built once per
    test run even across parallel workers (a file lock), and kept between runs under
    ``MNIST_SERVING_FIXTURE_CACHE`` when set (``make test-fast``), keyed by the code."""
    shared = os.environ.get("MNIST_SERVING_FIXTURE_CACHE")
    basetemp = tmp_path_factory.getbasetemp()
    # This run's own directory: under parallel workers, the one above each worker's.
    root = Path(shared) if shared else (basetemp.parent if "PYTEST_XDIST_WORKER" in os.environ else basetemp)
    built = root / f"fixture-{_fixture_key()}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "fixture.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built / "done").exists():
            from mnist_serving.export.cli import export_run  # torch: only when building
            from mnist_serving.train.cli import main as train_main

            shutil.rmtree(built, ignore_errors=True)
            run_dir = built / "runs" / "fixture-default"
            code = train_main(
                ["--run-dir", str(run_dir), "--epochs", str(FIXTURE_EPOCHS), "--no-progress", "--seed", "1"]
            )
            assert code == 0
            export_run(run_dir, built / "models", mnist, quantize="int8")
            (built / "done").touch()
    # Each session works on its own copy: nothing a test writes reaches the next run.
    mine = tmp_path_factory.mktemp("fixture")
    shutil.copytree(built / "runs", mine / "runs")
    shutil.copytree(built / "models", mine / "models")
    return mine


@pytest.fixture(scope="session")
def trained_run(fixture_model: Path) -> Path:
    """The fixture's training run (model.pt, metrics, plots)."""
    return fixture_model / "runs" / "fixture-default"


@pytest.fixture(scope="session")
def model_repository(fixture_model: Path) -> Path:
    """A model repository with `mnist` version 1 (and `mnist-int8` version 1) published."""
    return fixture_model / "models"


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real server, on a loopback port, serving the fixture's model repository."""
    from tests.server_process import ServerProcess

    log = tmp_path_factory.mktemp("server") / "server.log"
    process = ServerProcess(model_repository, log_path=log)
    process.wait_serving()
    yield process
    assert process.stop() == 0, log.read_text()[-2000:]


@pytest.fixture
def start_server(request: pytest.FixtureRequest, tmp_path: Path):
    """Start real `mnist-serve` processes on loopback: ``start_server(*flags, repository=,
    env=, prefix=, wait=True)``. Each one the test leaves running is stopped with SIGTERM at
    the end, and must drain and exit 0."""
    from tests.server_process import ServerProcess

    started: list[ServerProcess] = []

    def start(
        *args: str,
        repository: Path | None = None,
        env: dict | None = None,
        prefix: tuple[str, ...] = (),
        wait: bool = True,
    ) -> ServerProcess:
        if repository is None:
            repository = request.getfixturevalue("model_repository")
        log = tmp_path / f"server-{len(started)}.log"
        process = ServerProcess(repository, *args, env=env, log_path=log, prefix=prefix)
        started.append(process)
        if wait:
            process.wait_serving()
        return process

    yield start
    for process in started:
        if not process.stop_called:
            assert process.stop() == 0, process.log_text()[-2000:]


@pytest.fixture(scope="session")
def onnx_reference(model_repository: Path, mnist: Mnist):
    """In-process onnxruntime answers on the test set: what every server answer must equal."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_repository / "mnist" / "1" / "model.onnx"))
    probabilities, labels = session.run(None, {"image": mnist.x_test})
    return probabilities, labels
