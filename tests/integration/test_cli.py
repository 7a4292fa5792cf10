"""`mnist-classify` end to end: each input kind, each output format, exit codes."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_serving.common.idx import write_idx
from mnist_serving.common.preprocess import PREPROCESSING_VERSION
from tests.batch_cli import classify, classify_process, run_main
from tests.helpers import digit_file


def cli(*args: str, stdin: bytes | None = None, server=None) -> tuple[int, str, str]:
    """The CLI's ``main``, in this process (see tests/batch_cli.py); the console script's own
    exit codes and streams are checked by ``test_errors_exit_non_zero_with_one_line``."""
    return run_main([*args] + (["--server", server.address] if server else []), stdin)


def png(array: np.ndarray) -> bytes:
    return digit_file(array, size=64)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist):
    root = tmp_path_factory.mktemp("inputs")
    (root / "pngs" / "nested").mkdir(parents=True)
    for i in range(6):
        folder = root / "pngs" / ("nested" if i % 2 else "")
        (folder / f"digit{i}.png").write_bytes(png(mnist.x_test[i]))
    write_idx(root / "t10k-images-idx3-ubyte.gz", mnist.x_test[:300])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", mnist.y_test[:300])
    write_idx(root / "plain-idx3-ubyte", mnist.x_test[:20])
    np.save(root / "arrays.npy", mnist.x_test[:50])
    np.savez(root / "arrays.npz", images=mnist.x_test[:40], labels=mnist.y_test[:40])
    np.save(root / "labels.npy", mnist.y_test[:50])
    return root


def test_mnist_test_set_prints_accuracy_and_throughput(server, onnx_reference, mnist):
    code, out, err = cli("--mnist-test", "--no-progress", server=server)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 10000 and rows[0].keys() == {"source", "index", "label", "confidence", "error"}
    assert not any(r["error"] for r in rows)
    labels = np.array([int(r["label"]) for r in rows])
    assert np.array_equal(labels, onnx_reference[1])
    accuracy = (onnx_reference[1] == mnist.y_test).mean()
    assert f"accuracy {accuracy:.4f}" in err and "images/s" in err


def test_idx_with_labels_beside_and_jsonl_probabilities(server, inputs, onnx_reference, tmp_path):
    out_file = tmp_path / "out.jsonl"
    code, _, err = cli(
        str(inputs / "t10k-images-idx3-ubyte.gz"),
        "--format",
        "jsonl",
        "--probabilities",
        "--output",
        str(out_file),
        "--batch-size",
        "64",
        server=server,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(300))
    assert [r["label"] for r in rows] == onnx_reference[1][:300].tolist()
    assert len(rows[0]["probabilities"]) == 10 and rows[0]["source"].endswith("t10k-images-idx3-ubyte.gz")
    assert "accuracy" in err


def test_plain_idx_npy_npz_and_labels_flag(server, inputs, onnx_reference):
    code, out, err = cli(str(inputs / "arrays.npy"), "--labels", str(inputs / "labels.npy"), server=server)
    assert code == 0, err
    assert [int(r["label"]) for r in csv.DictReader(io.StringIO(out))] == onnx_reference[1][:50].tolist()
    assert "accuracy" in err
    code, out, err = cli(str(inputs / "arrays.npz"), str(inputs / "plain-idx3-ubyte"), server=server)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 60 and rows[40]["source"].endswith("plain-idx3-ubyte") and rows[40]["index"] == "0"


def test_png_files_and_recursive_directory(server, inputs, mnist):
    code, out, err = cli(str(inputs / "pngs"), server=server)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6
    by_name = {Path(r["source"]).name: int(r["label"]) for r in rows}
    correct = sum(by_name[f"digit{i}.png"] == mnist.y_test[i] for i in range(6))
    assert correct >= 5


def test_stdin_png_and_npy(server, inputs, mnist, onnx_reference):
    code, out, err = cli("-", stdin=png(mnist.x_test[0]), server=server)
    assert code == 0, err
    assert int(next(csv.DictReader(io.StringIO(out)))["label"]) == mnist.y_test[0]
    code, out, err = cli("-", "--format", "jsonl", stdin=(inputs / "arrays.npy").read_bytes(), server=server)
    assert code == 0, err
    assert [json.loads(x)["label"] for x in out.splitlines()] == onnx_reference[1][:50].tolist()


def test_health_and_info(server):
    code, out, _ = cli("health", server=server)
    assert (code, out.strip()) == (0, "SERVING")
    code, out, _ = cli("info", server=server)
    info = json.loads(out)
    assert info["model"]["name"] == "mnist" and info["model"]["versions"] == ["1"]
    assert info["model"]["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}
    # A client that preprocesses by itself compares these (v2 ModelMetadata parameters).
    assert info["model"]["preprocessing_version"] == PREPROCESSING_VERSION
    assert info["client"]["preprocessing_version"] == PREPROCESSING_VERSION


def test_errors_exit_non_zero_with_one_line(server, tmp_path):
    """Each exit code (1, 2, 3) once from the console script itself, the rest through main()."""
    code, _, err = classify_process(str(tmp_path / "missing.png"), server=server)
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = classify(str(tmp_path / "notes.txt"), server=server)
    assert code == 2 and "not an image" in err
    # An image that cannot be decoded is an error row (naming its file), not a lost job: exit 3.
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    code, out, err = classify_process(str(tmp_path / "broken.png"), server=server)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 3 and "1 failed" in err
    assert rows[0]["source"] == str(tmp_path / "broken.png") and rows[0]["label"] == ""
    assert rows[0]["error"].startswith(f"{tmp_path / 'broken.png'}: cannot decode image")
    code, out, err = classify(str(tmp_path / "broken.png"), "--server-decode", server=server)
    error = list(csv.DictReader(io.StringIO(out)))[0]["error"]  # decoded by the server: its status
    assert code == 3 and error.startswith(f"{tmp_path / 'broken.png'}: INVALID_ARGUMENT: images[0].encoded")
    code, _, err = classify_process("--mnist-test", "--server", "127.0.0.1:1", "--retries", "0")
    assert code == 1 and "UNAVAILABLE" in err
    code, _, err = classify(server=server)
    assert code == 2 and "no inputs" in err


def test_the_readme_examples_are_answered_rightly(server):
    """`mnist-classify docs/examples/*` as the README shows it: photos (one stored sideways with
    an EXIF tag), a printed digit, a pen stroke and a scan; the digit is in each file's name."""
    examples = sorted((Path(__file__).parents[2] / "docs" / "examples").iterdir())
    assert len(examples) >= 5
    code, out, err = cli(*map(str, examples), "--no-progress", server=server)
    assert code == 0, err
    rows = {Path(r["source"]).name: int(r["label"]) for r in csv.DictReader(io.StringIO(out))}
    assert rows == {p.name: int(p.stem.rsplit("-", 1)[1]) for p in examples}


def test_the_client_preprocesses_like_the_server(server):
    """Decoding where the data is: the library's preprocess_image gives the server's pixels."""
    from mnist_serving.client import PREPROCESSING_VERSION, Client, preprocess_image

    examples = sorted((Path(__file__).parents[2] / "docs" / "examples").iterdir())
    with Client(server.address) as client:
        assert client.preprocessing_version() == PREPROCESSING_VERSION
        for path in examples:
            local = client.classify(preprocess_image(path), probabilities=True)
            remote = client.classify(path, probabilities=True)
            assert local.label == remote.label
            assert np.allclose(local.probabilities, remote.probabilities, atol=1e-6)
