"""The one-shot jobs' switches that docker-compose.yml sets (mnist-train imports torch)."""

import pytest

from mnist_serving.common import model_repository
from mnist_serving.common.contract import MODEL_FILENAME, SIDECAR_FILENAME

# The tests that import torch share one parallel worker (`make test-fast`): each worker that
# imports it pays about 2 CPU-seconds, and the first export in a process 4 more.
pytestmark = pytest.mark.xdist_group("torch")


def _write(directory, version):
    (directory / MODEL_FILENAME).write_bytes(b"model %d" % version)
    (directory / SIDECAR_FILENAME).write_text("{}")


def test_train_reads_epochs_and_new_version_from_the_environment(monkeypatch):
    from mnist_serving.train.cli import parse_args

    monkeypatch.setenv("MNIST_SERVING_TRAIN_EPOCHS", "")  # compose passes empty when unset
    monkeypatch.delenv("MNIST_SERVING_NEW_VERSION", raising=False)
    args = parse_args([])
    assert args.epochs is None and args.new_version is False
    monkeypatch.setenv("MNIST_SERVING_TRAIN_EPOCHS", "2")
    monkeypatch.setenv("MNIST_SERVING_NEW_VERSION", "1")
    args = parse_args([])
    assert args.epochs == 2 and args.new_version is True
    assert parse_args(["--epochs", "5"]).epochs == 5  # the flag wins
    monkeypatch.setenv("MNIST_SERVING_TRAIN_EPOCHS", "two")
    with pytest.raises(SystemExit, match="expected an integer"):
        parse_args([])


def test_new_version_overrides_skip_if_published(tmp_path, monkeypatch, capsys):
    from mnist_serving.train.cli import main as train_main

    model_repository.publish(tmp_path, "mnist", _write)
    monkeypatch.delenv("MNIST_SERVING_NEW_VERSION", raising=False)
    assert train_main(["--skip-if-published", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "skipping training" in capsys.readouterr().out
    # With the switch the job goes on (here it stops at an unreadable data directory).
    monkeypatch.setenv("MNIST_SERVING_NEW_VERSION", "1")
    code = train_main(
        ["--skip-if-published", str(tmp_path), "--data-dir", str(tmp_path / "no-data"), "--epochs", "1"]
    )
    assert code == 2 and "skipping training" not in capsys.readouterr().out
