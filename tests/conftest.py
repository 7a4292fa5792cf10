"""Shared fixtures: the real MNIST data (cached once) and one small real trained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mnist_serving.mnist_data import Mnist, load_mnist

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
    code = train_main(["--run-dir", str(run_dir), "--epochs", str(FIXTURE_EPOCHS),
                       "--no-progress", "--seed", "1"])
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, trained_run: Path, mnist: Mnist) -> Path:
    """A model repository with `mnist` version 1 (and `mnist-int8` version 1) published."""
    from mnist_serving.export.cli import export_run

    repository = tmp_path_factory.mktemp("models")
    export_run(trained_run, repository, mnist, quantize="int8")
    return repository
