"""Export: the parity gate passes on a real model, fails on a perturbed one, publishes atomically."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from mnist_serving.common import model_repository
from mnist_serving.common.contract import INPUT, MODEL_NAME, OUTPUT_LABEL, OUTPUT_PROBABILITIES

# The tests that import torch share one parallel worker (`make test-fast`): each worker that
# imports it pays about 2 CPU-seconds, and the first export in a process 4 more.
pytestmark = pytest.mark.xdist_group("torch")


@pytest.fixture(scope="module")
def export():
    """The export step (it imports torch), imported by the tests that use it: collecting the
    suite on every parallel worker does not pay for it."""
    from mnist_serving.export import cli, parity

    return cli, parity


def _perturb(proto: onnx.ModelProto) -> None:
    """Nudge the last layer's bias: labels mostly survive, probabilities do not."""
    init = [i for i in proto.graph.initializer if numpy_helper.to_array(i).shape == (10,)][-1]
    array = numpy_helper.to_array(init) + np.float32(1e-2) * np.arange(10, dtype=np.float32)
    init.CopyFrom(numpy_helper.from_array(array, init.name))


def test_published_layout_metadata_and_accuracy(model_repository, mnist):
    assert model_repository.joinpath("mnist", "1", "model.onnx").is_file()
    sidecar = json.loads((model_repository / "mnist" / "1" / "model.json").read_text())
    assert sidecar["version"] == 1 and sidecar["name"] == MODEL_NAME
    assert sidecar["parity"]["labels_equal"] == 10000 and sidecar["parity"]["passed"]
    assert sidecar["parity"]["max_abs_diff"] <= 1e-5
    assert sidecar["data_sha256"] == mnist.sha256()
    assert sidecar["opset"] >= 17 and sidecar["recipe"]["name"] == "default"
    assert sidecar["contract"]["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}
    proto = onnx.load(model_repository / "mnist" / "1" / "model.onnx")
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["version"] == "1" and json.loads(meta["parity"])["passed"]
    # The model's own accuracy, computed here from the ONNX file, equals what it reports.
    session = ort.InferenceSession(str(model_repository / "mnist" / "1" / "model.onnx"))
    probs, labels = session.run(None, {INPUT.name: mnist.x_test})
    assert probs.dtype == OUTPUT_PROBABILITIES.dtype and labels.dtype == OUTPUT_LABEL.dtype
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    accuracy = float((labels == mnist.y_test).mean())
    assert accuracy == pytest.approx(sidecar["test_accuracy"], abs=1e-9)
    assert accuracy > 0.97


def test_dynamic_batch_axis(model_repository, mnist):
    session = ort.InferenceSession(str(model_repository / "mnist" / "1" / "model.onnx"))
    for n in (1, 7, 300):
        probs, labels = session.run(None, {"image": mnist.x_test[:n]})
        assert probs.shape == (n, 10) and labels.shape == (n,)


def test_int8_variant_published_with_its_report(model_repository):
    sidecar = json.loads((model_repository / "mnist-int8" / "1" / "model.json").read_text())
    assert sidecar["quantization"]["passed"] and sidecar["quantization"]["agreement"] >= 0.998
    ops = {n.op_type for n in onnx.load(model_repository / "mnist-int8" / "1" / "model.onnx").graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}


def test_parity_failure_publishes_nothing(export, tmp_path, trained_run, mnist):
    repository = tmp_path / "models"
    with pytest.raises(export[1].ParityError, match="max"):
        export[0].export_run(trained_run, repository, mnist, transform=_perturb)
    assert model_repository.list_versions(repository, MODEL_NAME) == []
    # No version, and no staging directory left behind for a server to trip over.
    assert not (repository / MODEL_NAME).exists() or list((repository / MODEL_NAME).iterdir()) == []


def test_cli_exports_newest_run_into_next_version(export, tmp_path, trained_run, capsys):
    repository = tmp_path / "models"
    (repository / "mnist" / "4").mkdir(parents=True)  # an empty stray: versions still increase
    assert export[0].main([str(trained_run), "--model-repository", str(repository)]) == 0
    assert model_repository.list_versions(repository, "mnist") == [4, 5]
    assert (repository / "mnist" / "5" / "model.onnx").is_file()
    assert "10000/10000 labels equal" in capsys.readouterr().out


def test_cli_without_runs_is_a_clear_error(export, tmp_path, capsys):
    assert export[0].main(["--runs-dir", str(tmp_path / "none"), "--model-repository", str(tmp_path)]) == 2
    assert "no trained run" in capsys.readouterr().err


def test_one_shot_jobs_skip_when_a_model_is_published(export, model_repository, tmp_path, capsys):
    from mnist_serving.train.cli import main as train_main

    assert train_main(["--skip-if-published", str(model_repository), "--runs-dir", str(tmp_path)]) == 0
    assert (
        export[0].main(
            ["--skip-if-published", "--model-repository", str(model_repository), "--runs-dir", str(tmp_path)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "skipping training" in out and "skipping export" in out
    assert not any(tmp_path.iterdir())  # nothing trained
