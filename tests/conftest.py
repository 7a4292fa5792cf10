"""Shared fixtures: the real MNIST data (cached once) and one small real trained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_serving.common.mnist_data import Mnist, load_mnist

# Tests keep every artefact under pytest's temporary directories, and share the data cache.
os.environ.setdefault("MNIST_SERVING_CACHE", str(Path.home() / ".cache" / "mnist-serving"))

# A default-recipe run this short already scores ≈98%: enough to check the whole pipeline.
FIXTURE_EPOCHS = 3


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, mnist: Mnist) -> Path:
    """A real default-recipe run (few epochs) written by `mnist-train`'s own entry point."""
    from mnist_serving.train.cli import main as train_main

    run_dir = tmp_path_factory.mktemp("runs") / "fixture-default"
    code = train_main(
        ["--run-dir", str(run_dir), "--epochs", str(FIXTURE_EPOCHS), "--no-progress", "--seed", "1"]
    )
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, trained_run: Path, mnist: Mnist) -> Path:
    """A model repository with `mnist` version 1 (and `mnist-int8` version 1) published."""
    from mnist_serving.export.cli import export_run

    repository = tmp_path_factory.mktemp("models")
    export_run(trained_run, repository, mnist, quantize="int8")
    return repository


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real server, on a loopback port, serving the fixture's model repository."""
    from tests.server_process import ServerProcess

    log = tmp_path_factory.mktemp("server") / "server.log"
    process = ServerProcess(model_repository, log_path=log)
    process.wait_serving()
    yield process
    assert process.stop() == 0, log.read_text()[-2000:]


@pytest.fixture(scope="session")
def onnx_reference(model_repository: Path, mnist: Mnist):
    """In-process onnxruntime answers on the test set: what every server answer must equal."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_repository / "mnist" / "1" / "model.onnx"))
    probabilities, labels = session.run(None, {"image": mnist.x_test})
    return probabilities, labels
