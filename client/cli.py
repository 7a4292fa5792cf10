"""`mnist-classify`: batch classification from the shell, plus `health` and `info`.

mnist-classify digit.png scans/ train-images-idx3-ubyte.gz arrays.npy
mnist-classify --mnist-test --format jsonl --output results.jsonl
mnist-classify health
mnist-classify info

Images the server cannot classify (undecodable, wrong size) become rows with an `error`.
Exit codes: 0 every image classified; 3 some could not be (see the error rows);
1 the server or transport failed; 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from mnist_serving.client.client import DEFAULT_SERVER, Client
from mnist_serving.client.results import BatchResult, ClassifyError
from mnist_serving.client.sources import Batch, InputError, expand, read_file
from mnist_serving.common.contract import MODEL_NAME, NUM_CLASSES
from mnist_serving.common.idx import IdxError, read_idx
from mnist_serving.common.preprocess import PREPROCESSING_VERSION
from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb


def _connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("MNIST_SERVING_SERVER", DEFAULT_SERVER),
        help="HOST:PORT of the server [env MNIST_SERVING_SERVER]",
    )
    group.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    group.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE, with backoff")
    group.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca)")
    group.add_argument("--ca", type=Path, help="CA certificate (PEM) to verify the server")
    group.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key", type=Path, help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--token",
        default=os.environ.get("MNIST_SERVING_TOKEN"),
        help="bearer token [env MNIST_SERVING_TOKEN]",
    )


def _client(args: argparse.Namespace) -> Client:
    return Client(
        args.server,
        timeout=args.timeout,
        retries=args.retries,
        tls=args.tls,
        root_certificates=args.ca,
        client_certificate=args.cert,
        client_key=args.key,
        token=args.token,
    )


def classify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="*", help="image files, directories, IDX files, .npy/.npz, or -")
    parser.add_argument("--mnist-test", action="store_true", help="classify the 10,000 MNIST test images")
    parser.add_argument("--labels", type=Path, help="IDX or .npy labels for the inputs (for accuracy)")
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="output format")
    parser.add_argument("--output", "-o", type=Path, help="write results here instead of stdout")
    parser.add_argument("--probabilities", action="store_true", help="include the ten probabilities")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--model", default="", help="model name (default: the server's 'mnist')")
    parser.add_argument("--model-version", default="", help="model version (default: the served one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _connection_args(parser)
    return parser


class Writer:
    """CSV or JSON Lines rows: source, index, label, confidence[, probabilities], error.

    An image the server could not classify gets a row too: no label or confidence, and the
    reason in ``error``; ``failed`` counts them.
    """

    def __init__(self, out: TextIO, fmt: str, probabilities: bool) -> None:
        self.out, self.fmt, self.probabilities = out, fmt, probabilities
        self.failed = 0
        if fmt == "csv":
            self.csv = csv.writer(out)
            header = ["source", "index", "label", "confidence"]
            probs = [f"p{d}" for d in range(NUM_CLASSES)] if probabilities else []
            self.csv.writerow([*header, *probs, "error"])

    def rows(self, sources: list[str], indices: list[int] | np.ndarray, result: BatchResult) -> None:
        labels, confidences, probs = result.labels, result.confidences, result.probabilities
        for i, (source, index) in enumerate(zip(sources, indices, strict=True)):
            error = result.errors.get(i)
            self.failed += error is not None
            if self.fmt == "csv":
                if error is not None:
                    empty = [""] * (NUM_CLASSES if self.probabilities else 0)
                    self.csv.writerow([source, int(index), "", "", *empty, error])
                    continue
                row = [source, int(index), int(labels[i]), f"{confidences[i]:.6f}"]
                if self.probabilities:
                    row += [f"{p:.6f}" for p in probs[i]]
                self.csv.writerow([*row, ""])
            else:
                entry = {"source": source, "index": int(index)}
                if error is not None:
                    entry.update(label=None, confidence=None, error=error)
                else:
                    entry.update(label=int(labels[i]), confidence=round(float(confidences[i]), 6))
                    if self.probabilities:
                        entry["probabilities"] = [round(float(p), 6) for p in probs[i]]
                self.out.write(json.dumps(entry) + "\n")


def _load_labels(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    return read_idx(path)


def _batches(args: argparse.Namespace) -> list[Batch]:
    batches: list[Batch] = []
    if args.mnist_test:
        from mnist_serving.common.mnist_data import load_mnist

        data = load_mnist()
        batches.append(Batch("mnist-test", array=data.x_test, labels=data.y_test))
    batches.extend(expand(args.inputs))
    if not batches:
        raise InputError("no inputs: give image files, directories, IDX/.npy/.npz files, - or --mnist-test")
    if args.labels is not None:
        labels = _load_labels(args.labels)
        total = sum(len(b) for b in batches)
        if len(labels) != total:
            raise InputError(f"--labels {args.labels}: {len(labels)} labels for {total} images")
        offset = 0
        for batch in batches:
            batch.labels = labels[offset : offset + len(batch)]
            offset += len(batch)
    return batches


def run_classify(args: argparse.Namespace) -> int:
    batches = _batches(args)
    total = sum(len(b) for b in batches)
    out = args.output.open("w", newline="") if args.output else sys.stdout
    writer = Writer(out, args.format, args.probabilities)
    correct = known = 0
    bar = tqdm(total=total, unit="img", file=sys.stderr, disable=args.no_progress or None, desc="classifying")
    started = time.perf_counter()
    try:
        with _client(args) as client:
            for batch in batches:
                if batch.array is not None:
                    result = client.classify_batch(
                        batch.array,
                        args.batch_size,
                        args.concurrency,
                        args.probabilities,
                        args.model,
                        args.model_version,
                        progress=bar.update,
                    )
                    writer.rows([batch.source] * len(batch), np.arange(len(batch)), result)
                    labels = batch.labels
                else:
                    files = batch.files or []
                    result_parts = []
                    for start in range(0, len(files), args.batch_size):
                        chunk = files[start : start + args.batch_size]
                        images = [pb.Image(encoded=read_file(p)) for p in chunk]
                        part = client.classify_batch(
                            images,
                            args.batch_size,
                            1,
                            args.probabilities,
                            args.model,
                            args.model_version,
                            progress=bar.update,
                        )
                        writer.rows([str(p) for p in chunk], [0] * len(chunk), part)
                        result_parts.append(part)
                    result = BatchResult(
                        np.concatenate([r.labels for r in result_parts]),
                        np.concatenate([r.confidences for r in result_parts]),
                        None,
                        "",
                        "",
                    )
                    labels = batch.labels
                if labels is not None:
                    classified = result.labels >= 0
                    known += int(classified.sum())
                    correct += int((result.labels == np.asarray(labels, dtype=np.int64))[classified].sum())
    finally:
        bar.close()
        if args.output:
            out.close()
    seconds = time.perf_counter() - started
    summary = f"{total} images in {seconds:.2f} s ({total / seconds:,.0f} images/s)"
    if known:
        summary += f"; accuracy {correct / known:.4f} ({correct}/{known})"
    if writer.failed:
        summary += f"; {writer.failed} could not be classified (rows with an error)"
    print(summary, file=sys.stderr)
    return 3 if writer.failed else 0


def run_health(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mnist-classify health", description="Check the server's gRPC health (exit 0 when SERVING)."
    )
    parser.add_argument("--service", default="", help="service name ('' = whole server)")
    _connection_args(parser)
    args = parser.parse_args(argv)
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def run_info(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mnist-classify info", description="Server and model metadata.")
    parser.add_argument("--model", default=MODEL_NAME)
    _connection_args(parser)
    args = parser.parse_args(argv)
    with _client(args) as client:
        server = client.server_metadata()
        model = client.model_metadata(args.model)
    info = {
        "server": {"name": server.name, "version": server.version},
        "model": {
            "name": model.name,
            "versions": list(model.versions),
            "platform": model.platform,
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.inputs
            ],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.outputs
            ],
            "preprocessing_version": model.parameters["preprocessing_version"].string_param
            if "preprocessing_version" in model.parameters
            else None,
        },
        "client": {"preprocessing_version": PREPROCESSING_VERSION},
    }
    print(json.dumps(info, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"health": run_health, "info": run_info}
    # The subcommand may follow connection options (`--server X health`), unless a file has its name.
    command = next((a for a in argv if a in commands and not Path(a).exists()), None)
    try:
        if command is not None:
            argv.remove(command)
            return commands[command](argv)
        return run_classify(classify_parser().parse_args(argv))
    except (InputError, IdxError, OSError) as exc:
        print(f"mnist-classify: {exc}", file=sys.stderr)
        return 2
    except ClassifyError as exc:
        print(f"mnist-classify: server error {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
