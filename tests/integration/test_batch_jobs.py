"""`mnist-classify` as a batch job, on real files: streaming, per-file errors, resume, offline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.batch_cli import EXAMPLES, EXE, classify, classify_process, messy_inbox, rows
from tests.helpers import digit_file
from tests.holding_proxy import HoldingProxy
from tests.process_tree import alive, descendants


@pytest.fixture
def messy_directory(tmp_path: Path, mnist) -> Path:
    return messy_inbox(tmp_path, mnist)


def test_a_messy_directory_gives_a_row_per_image_and_goes_on(server, messy_directory):
    code, out, err = classify(str(messy_directory), server=server)
    table = rows(out)
    names = [Path(r["source"]).relative_to(messy_directory).as_posix() for r in table]
    assert names == sorted(names, key=lambda n: n.split("/"))  # input order: a sorted walk
    by_name = {Path(r["source"]).name: r for r in table}
    for bad, reason in (
        ("corrupt.png", "not a valid PNG file"),  # a PNG signature, then garbage
        ("truncated.jpg", "cannot decode"),
        ("empty.png", "empty"),
    ):
        assert (
            by_name[bad]["label"] == "" and bad in by_name[bad]["error"] and reason in by_name[bad]["error"]
        )
    for example in EXAMPLES.iterdir():
        assert by_name[example.name]["label"] == example.stem.rsplit("-", 1)[1]
    assert by_name["mnist-7.png"]["label"] == "7"
    assert "README.txt" not in by_name and "notes.json" not in by_name
    assert code == 3, err
    assert f"{len(table)} rows written" in err and "3 failed" in err and "2 not images" in err


def test_server_decoding_and_offline_mode_give_the_same_rows(server, model_repository, messy_directory):
    here = classify(str(messy_directory), "--probabilities", server=server)
    there = classify(str(messy_directory), "--probabilities", "--server-decode", server=server)
    offline = classify(str(messy_directory), "--probabilities", "--model-repository", str(model_repository))
    assert here[0] == there[0] == offline[0] == 3
    mine, theirs, local = rows(here[1]), rows(there[1]), rows(offline[1])
    assert [r["label"] for r in mine] == [r["label"] for r in theirs] == [r["label"] for r in local]
    for a, b in zip(mine, local, strict=True):  # offline: the same pipeline and model, same numbers
        assert a["source"] == b["source"] and a["error"].split(": ")[0] == b["error"].split(": ")[0]
        if a["label"]:
            assert np.allclose(
                [float(a[f"p{d}"]) for d in range(10)], [float(b[f"p{d}"]) for d in range(10)], atol=2e-6
            )


def test_output_order_follows_the_command_line(server, tmp_path, mnist):
    np.save(tmp_path / "arrays.npy", mnist.x_test[:3])
    Image.fromarray(mnist.x_test[5]).save(tmp_path / "one.png")
    code, out, err = classify(
        str(tmp_path / "one.png"), str(tmp_path / "arrays.npy"), str(EXAMPLES / "scan-9.jpg"), server=server
    )
    assert code == 0, err
    assert [(Path(r["source"]).name, r["index"]) for r in rows(out)] == [
        ("one.png", "0"),
        ("arrays.npy", "0"),
        ("arrays.npy", "1"),
        ("arrays.npy", "2"),
        ("scan-9.jpg", "0"),
    ]


def test_globs_and_files_from_list_inputs_lazily(server, messy_directory, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{EXAMPLES / 'pen-8.png'}\n\n{EXAMPLES / 'scan-9.jpg'}\n")
    code, out, err = classify(str(messy_directory / "*.jpg"), "--files-from", str(listing), server=server)
    names = [Path(r["source"]).name for r in rows(out)]
    jpgs = sorted(p.name for p in messy_directory.glob("*.jpg"))
    assert names == [*jpgs, "pen-8.png", "scan-9.jpg"]
    assert code == 3  # the truncated JPEG
    code, out, _ = classify("--files-from", "-", stdin=listing.read_bytes(), server=server)
    assert (code, [Path(r["source"]).name for r in rows(out)]) == (0, ["pen-8.png", "scan-9.jpg"])


def _pss_of_tree(pid: int) -> int:
    """Proportional set size of a process and all its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


@pytest.mark.slow  # a soak: one million images through a memory map
def test_a_huge_npy_streams_through_a_memory_map_in_flat_memory(model_repository, tmp_path):
    """A million images (784 MB on disk), in process: the whole tree stays under 300 MB."""
    count = 1_000_000
    path = tmp_path / "huge.npy"
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 28, 28))
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8)
    for start in range(0, count, 1000):
        images[start : start + 1000] = block
    images.flush()
    del images
    out = tmp_path / "out.csv"
    process = subprocess.Popen(
        [
            EXE,
            "--no-progress",
            str(path),
            "--model-repository",
            str(model_repository),
            "-o",
            str(out),
            "--batch-size",
            "4096",
        ],
        stderr=subprocess.PIPE,
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, _pss_of_tree(process.pid))
        time.sleep(0.2)
    err = process.stderr.read().decode()
    assert process.returncode == 0, err
    assert f"{count} rows written" in err
    assert peak < 300 * 2**20, f"peak PSS {peak / 2**20:.0f} MB"
    with out.open() as f:
        assert sum(1 for _ in f) == count + 1


def test_kill_9_then_resume_gives_the_uninterrupted_output(server, tmp_path, mnist):
    images = np.concatenate([mnist.x_test] * 4)  # 40,000 images
    np.save(tmp_path / "images.npy", images)
    args = [str(tmp_path / "images.npy"), "--batch-size", "128", "--concurrency", "1", "--format", "jsonl"]
    code, whole, err = classify(*args, "-o", str(tmp_path / "whole.jsonl"), server=server)
    assert code == 0, err
    target = tmp_path / "killed.jsonl"
    with HoldingProxy(server.address, allow=20) as proxy:  # the job stops part-way, held
        process = subprocess.Popen(
            [EXE, "--no-progress", *args, "-o", str(target), "--server", proxy.address]
        )
        assert proxy.holding.wait(120), "the job never reached its 21st call"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    written = target.read_bytes().count(b"\n")
    assert 0 < written < len(images), "the job must be killed part-way"
    code, _, err = classify(*args, "-o", str(target), "--resume", server=server)
    assert code == 0, err
    assert f"{written} already in the output" in err
    assert target.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert [json.loads(line)["index"] for line in target.read_text().splitlines()][-1] == len(images) - 1


def test_resume_refuses_another_jobs_output(server, tmp_path, mnist):
    np.save(tmp_path / "a.npy", mnist.x_test[:10])
    np.save(tmp_path / "b.npy", mnist.x_test[:10])
    code, _, err = classify(str(tmp_path / "a.npy"), "-o", str(tmp_path / "out.csv"), server=server)
    assert code == 0, err
    code, _, err = classify(
        str(tmp_path / "b.npy"), "-o", str(tmp_path / "out.csv"), "--resume", server=server
    )
    assert code == 2 and "not the same job" in err


def test_a_closed_stdout_ends_the_job_quietly(server, mnist, tmp_path):
    np.save(tmp_path / "images.npy", np.concatenate([mnist.x_test] * 3))
    job = f"'{EXE}' --no-progress '{tmp_path / 'images.npy'}' --batch-size 64 --server {server.address}"
    command = f"{job} | head -3"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=120, check=False
    )
    assert done.stdout.decode().count("\n") == 3
    assert "Broken pipe" not in done.stderr.decode() and "Traceback" not in done.stderr.decode()
    assert done.returncode == 141


def test_sigint_stops_cleanly_with_valid_output_and_a_summary(server, mnist, tmp_path):
    np.save(tmp_path / "images.npy", np.concatenate([mnist.x_test] * 6))
    target = tmp_path / "out.csv"
    job = [EXE, "--no-progress", str(tmp_path / "images.npy"), "--batch-size", "64", "--concurrency", "1"]
    # The proxy answers 10 calls of 64 images, then holds the job until it is interrupted.
    with HoldingProxy(server.address, allow=10) as proxy:
        process = subprocess.Popen(
            [*job, "-o", str(target), "--server", proxy.address], stderr=subprocess.PIPE
        )
        assert proxy.holding.wait(120), "the job never reached its 11th call"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    table = rows(target.read_text())
    assert 0 < len(table) <= 640
    assert [int(r["index"]) for r in table] == list(range(len(table)))  # a whole, valid prefix


def test_parquet_in_and_out(server, tmp_path, mnist):
    """Tables as the common dataset tools write them: encoded images in a bytes column (or a
    struct with `bytes`, as Hugging Face stores them), or 784 pixels a row; a Parquet dataset
    out, whose parts are renamed into place, resumable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = [digit_file(digit) for digit in mnist.x_test[:300]]
    encoded[7] = b"not an image"
    labels = mnist.y_test[:300].astype(np.int64)
    pq.write_table(
        pa.table({"image": pa.array(encoded, pa.binary()), "label": labels}), tmp_path / "bytes.parquet"
    )
    struct = pa.StructArray.from_arrays(
        [pa.array(encoded, pa.binary()), pa.array([None] * 300, pa.string())], names=["bytes", "path"]
    )
    pq.write_table(pa.table({"image": struct}), tmp_path / "hf.parquet")
    pixels = pa.array([row.tolist() for row in mnist.x_test[:300].reshape(300, 784)], pa.list_(pa.uint8()))
    pq.write_table(pa.table({"pixels": pixels, "label": labels}), tmp_path / "pixels.parquet")

    code, out, err = classify(str(tmp_path / "bytes.parquet"), server=server)
    table = rows(out)
    assert code == 3 and len(table) == 300 and "accuracy" in err
    assert [int(r["index"]) for r in table] == list(range(300)) and "bytes.parquet#7" in table[7]["error"]
    code, hf_out, _ = classify(str(tmp_path / "hf.parquet"), server=server)
    assert [r["label"] for r in rows(hf_out)] == [r["label"] for r in table]
    code, pixel_out, err = classify(str(tmp_path / "pixels.parquet"), server=server)
    assert code == 0 and len(rows(pixel_out)) == 300, err

    dataset = tmp_path / "out"
    args = [str(tmp_path / "pixels.parquet"), str(tmp_path / "bytes.parquet"), "--format", "parquet"]
    args += ["-o", str(dataset), "--part-rows", "256"]
    code, _, err = classify(*args, server=server)
    assert code == 3, err
    written = pq.read_table(dataset).to_pydict()
    assert written["index"] == list(range(300)) * 2 and written["label"][300 + 7] is None
    # A crash after the first part: its successor half-written under its temporary name.
    parts = sorted(dataset.glob("part-*.parquet"))
    assert len(parts) == 3 and not list(dataset.glob(".*.tmp"))  # 256 + 256 + 88 rows
    parts[-1].rename(dataset / f".{parts[-1].name}.tmp")
    code, _, err = classify(*args, "--resume", server=server)
    assert code == 0 and "88 rows written" in err and "512 already" in err, err  # this run's rows
    assert pq.read_table(dataset).to_pydict() == written and not list(dataset.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("name", "content", "args", "words"),
    [
        ("notes.csv", b"name,phone\nada,123\nbob,456", (), "not a CSV written by mnist-classify"),
        ("out.csv", bytes(range(256)) * 4, (), "not text"),
        (
            "out.jsonl",
            b'{"source": "a", "index": 0, "label": 1, "confidence": 0.9}\n[1,2]\n',
            ("--format", "jsonl"),
            "not JSON Lines",
        ),
        (
            "out.csv",
            b"source,index,label,confidence,error\nimages.npy,0,7,0.990000,\n",
            ("--probabilities",),
            "no probabilities",
        ),
    ],
)
def test_resume_refuses_a_file_it_did_not_write_and_leaves_it_byte_identical(
    server, tmp_path, mnist, name, content, args, words
):
    np.save(tmp_path / "images.npy", mnist.x_test[:10])
    target = tmp_path / name
    target.write_bytes(content)
    code, _, err = classify(str(tmp_path / "images.npy"), *args, "-o", str(target), "--resume", server=server)
    assert code == 2 and words in err and "Traceback" not in err, err
    assert target.read_bytes() == content


def test_resume_of_another_jobs_output_leaves_it_byte_identical(server, tmp_path, mnist):
    np.save(tmp_path / "a.npy", mnist.x_test[:10])
    np.save(tmp_path / "b.npy", mnist.x_test[:10])
    target = tmp_path / "out.csv"
    code, _, err = classify(str(tmp_path / "a.npy"), "-o", str(target), server=server)
    assert code == 0, err
    torn = target.read_bytes()[:-7]  # as a kill leaves it: the last row cut short
    target.write_bytes(torn)
    code, _, err = classify(str(tmp_path / "b.npy"), "-o", str(target), "--resume", server=server)
    assert code == 2 and "not the same job" in err
    assert target.read_bytes() == torn  # the torn row is cut only once the job is known to be the same


def test_a_row_torn_inside_a_quoted_name_with_a_newline_resumes_to_the_whole_output(server, tmp_path, mnist):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(6):
        Image.fromarray(255 - mnist.x_test[i]).save(inbox / f"scan {i}\nfrom the desk.png")
    whole, torn = tmp_path / "whole.csv", tmp_path / "torn.csv"
    code, _, err = classify(str(inbox), "-o", str(whole), server=server)
    assert code == 0, err
    data = whole.read_bytes()
    cut = data.index(b"\nfrom the desk.png", data.index(b"scan 4")) + 1  # inside row 4's quoted name
    torn.write_bytes(data[:cut])
    code, _, err = classify(str(inbox), "-o", str(torn), "--resume", server=server)
    assert code == 0 and "4 already in the output" in err, err
    assert torn.read_bytes() == data


def test_a_job_killed_with_9_leaves_no_decode_process_behind(server, tmp_path, mnist):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(400):
        Image.fromarray(255 - mnist.x_test[i]).save(inbox / f"{i:03d}.png")
    with HoldingProxy(server.address, allow=1) as proxy:  # the job is held mid-way, its decoders up
        process = subprocess.Popen(
            [EXE, "--no-progress", str(inbox), "--batch-size", "64", "--server", proxy.address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert proxy.holding.wait(120), "the job never reached its second call"
        left = descendants(process.pid)
        assert left, "the job started no decode processes"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in left):
            assert time.monotonic() < deadline, f"still running: {[p for p in left if alive(p)]}"
            time.sleep(0.05)  # polling other processes' state


def test_parquet_columns_by_name_integer_pixels_and_null_labels(server, tmp_path, mnist):
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = [digit_file(digit) for digit in mnist.x_test[:20]]
    labels = [int(v) for v in mnist.y_test[:20]]
    labels[3] = None  # a null label: this row has no truth
    table = pa.table(
        {
            "thumbnail": pa.array([b"\x89PNG not this one"] * 20, pa.binary()),
            "scan": pa.array(encoded, pa.binary()),
            "digit": pa.array(labels, pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "two.parquet")
    code, _, err = classify(str(tmp_path / "two.parquet"), server=server)
    assert code == 2 and "--image-column" in err and "thumbnail" in err
    code, out, err = classify(
        str(tmp_path / "two.parquet"), "--image-column", "scan", "--label-column", "digit", server=server
    )
    assert code == 0 and len(rows(out)) == 20, err
    assert "(19/19)" in err, err  # the row with a null label counts as unlabelled
    pixels = pa.array([row.tolist() for row in mnist.x_test[:20].reshape(20, 784)])  # int64 lists
    assert pixels.type == pa.list_(pa.int64())
    pq.write_table(pa.table({"pixels": pixels}), tmp_path / "ints.parquet")
    code, out, err = classify(str(tmp_path / "ints.parquet"), server=server)
    assert code == 0 and [r["label"] for r in rows(out)] == [
        r["label"]
        for r in rows(classify(str(tmp_path / "two.parquet"), "--image-column", "scan", server=server)[1])
    ]
    # An output dataset whose part numbers passed 99999 resumes after the highest by number.
    np.save(tmp_path / "images.npy", mnist.x_test[:20])
    dataset = tmp_path / "rows"
    job = [str(tmp_path / "images.npy"), "--format", "parquet", "--part-rows", "10", "-o", str(dataset)]
    code, _, err = classify(*job, server=server)
    assert code == 0, err
    (dataset / "part-00000.parquet").rename(dataset / "part-99999.parquet")
    (dataset / "part-00001.parquet").rename(dataset / "part-100000.parquet")
    np.save(tmp_path / "images.npy", mnist.x_test[:30])  # the same inputs, grown by 10
    code, _, err = classify(*job, "--resume", server=server)
    assert code == 0 and "20 already in the output" in err, err
    assert sorted(p.name for p in dataset.glob("part-*")) == [
        "part-100000.parquet",
        "part-100001.parquet",
        "part-99999.parquet",
    ]


def test_a_listed_path_that_is_missing_or_no_image_is_an_error_row_and_resume_goes_past_it(server, tmp_path):
    """--files-from is streamed: a line naming a missing file, or a file that is no image,
    becomes a row with an error; the job goes on, and --resume does not stop on it again."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    listing = tmp_path / "list.txt"
    lines = [EXAMPLES / "pen-8.png", tmp_path / "gone.png", notes, EXAMPLES / "scan-9.jpg"]
    listing.write_text("".join(f"{line}\n" for line in lines))
    output = tmp_path / "out.csv"
    code, _, err = classify("--files-from", str(listing), "-o", str(output), server=server)
    got = rows(output.read_text())
    assert code == 3 and "2 failed" in err, err
    assert [r["source"] for r in got] == [str(line) for line in lines]
    assert "cannot read" in got[1]["error"] and "cannot decode image" in got[2]["error"]
    assert got[0]["label"] == "8" and got[3]["label"] == "9"
    listing.write_text(listing.read_text() + f"{EXAMPLES / 'pen-8.png'}\n")
    code, _, err = classify("--files-from", str(listing), "-o", str(output), "--resume", server=server)
    assert code == 0, err
    assert len(rows(output.read_text())) == 5


def test_model_repository_problems_are_usage_errors(model_repository, tmp_path):
    """--model-repository runs in process: no published model, a refused version or no
    onnxruntime is the caller's to fix (exit 2, one line), not a server error (1)."""
    image = str(EXAMPLES / "pen-8.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = classify(image, "--model-repository", str(empty))
    assert code == 2 and "no published 'mnist' model" in err and len(err.strip().splitlines()) == 1
    tampered = tmp_path / "tampered"
    shutil.copytree(model_repository, tampered)
    with open(tampered / "mnist" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")  # no longer the bytes its sidecar names
    code, _, err = classify(image, "--model-repository", str(tampered))
    assert code == 2 and "refusing it" in err, err
    shadow = tmp_path / "shadow"  # an install without onnxruntime
    (shadow / "onnxruntime").mkdir(parents=True)
    (shadow / "onnxruntime" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    code, _, err = classify_process(image, "--model-repository", str(model_repository), env=env)
    assert code == 2 and "needs onnxruntime" in err, err
