"""`mnist-classify`: batch classification from the shell, plus `health` and `info`.

mnist-classify digit.png scans/ 'photos/**/*.jpg' train-images-idx3-ubyte.gz arrays.npy
mnist-classify scans/ -o results.csv            # kill it, then add --resume to go on
mnist-classify --mnist-test --format jsonl --output results.jsonl
mnist-classify --model-repository models scans/   # no server: the published model in process
mnist-classify health
mnist-classify info

Inputs are streamed in command-line order; rows are written in that order as the job goes.
Image files are decoded here, in --decode-workers processes, with the server's own
preprocessing (--server-decode sends them encoded instead). A file that cannot be read or
decoded, or an image the server rejects, becomes a row with an `error`; the job goes on.
UNAVAILABLE, RESOURCE_EXHAUSTED and UNKNOWN (a call cut off in transport) are retried with
backoff (--retries).

Exit codes: 0 every image classified; 3 some could not be (see the error rows);
1 the server or transport failed and the job stopped; 2 bad usage or unreadable input;
130 interrupted (SIGINT: the output holds every row written); 141 standard output closed
early (`mnist-classify ... | head`), quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from mnist_serving.client.batch.backends import LocalBackend, ModelUnavailable, ServerBackend
from mnist_serving.client.batch.job import Job, Row, Summary, start_decode_server
from mnist_serving.client.batch.output import (
    ParquetWriter,
    Resume,
    ResumeError,
    Writer,
    completed,
    completed_parquet,
)
from mnist_serving.client.batch.sources import Chunk, InputError, Inputs, TableColumns, chunks, listed_inputs
from mnist_serving.client.client import Client
from mnist_serving.client.options import DEFAULT_SERVER
from mnist_serving.client.results import ClassifyError
from mnist_serving.common.contract import MODEL_NAME, metadata_document
from mnist_serving.common.idx import IdxError, read_idx
from mnist_serving.common.preprocess_contract import PREPROCESSING_VERSION
from mnist_serving.common.processes import workers_skip_the_main_script

if TYPE_CHECKING:
    from mnist_serving.client.batch.ray_engine import RayEngine


def _connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("MNIST_SERVING_SERVER", DEFAULT_SERVER),
        help="HOST:PORT of the server [env MNIST_SERVING_SERVER]",
    )
    group.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    group.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries on UNAVAILABLE, RESOURCE_EXHAUSTED and UNKNOWN, with backoff",
    )
    group.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca)")
    group.add_argument("--ca", type=Path, help="CA certificate (PEM) to verify the server")
    group.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key", type=Path, help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--token",
        default=os.environ.get("MNIST_SERVING_TOKEN"),
        help="bearer token [env MNIST_SERVING_TOKEN]",
    )


def _client_options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "server": args.server,
        "timeout": args.timeout,
        "retries": args.retries,
        "tls": args.tls,
        "root_certificates": args.ca,
        "client_certificate": args.cert,
        "client_key": args.key,
        "token": args.token,
    }


def _client(args: argparse.Namespace) -> Client:
    return Client(**_client_options(args))


def classify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "inputs", nargs="*", help="image files, directories, globs, IDX files, .npy/.npz, or - (stdin)"
    )
    parser.add_argument(
        "--files-from", metavar="FILE", help="also read input paths from FILE, one per line (- for stdin)"
    )
    parser.add_argument("--mnist-test", action="store_true", help="classify the 10,000 MNIST test images")
    parser.add_argument("--labels", type=Path, help="IDX or .npy labels for the inputs (for accuracy)")
    parser.add_argument(
        "--format",
        choices=["csv", "jsonl", "parquet"],
        default="csv",
        help="output format (parquet: --output is a directory of part files; extra [batch])",
    )
    parser.add_argument("--output", "-o", type=Path, help="write results here instead of stdout")
    parser.add_argument(
        "--part-rows", type=int, default=65536, help="rows per Parquet part file (--format parquet)"
    )
    parser.add_argument(
        "--image-column",
        help="Parquet input: the column of encoded images or 784 pixels (default: 'image', "
        "or the one column that can hold images)",
    )
    parser.add_argument(
        "--label-column",
        help="Parquet input: the column of true labels, for the summary's accuracy "
        "(default: 'label', where there is one)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted job: keep --output's rows, add the rest",
    )
    parser.add_argument("--probabilities", action="store_true", help="include the ten probabilities")
    parser.add_argument("--batch-size", type=int, default=256, help="images per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument(
        "--decode-workers", type=int, default=0, help="processes decoding image files here (0: one per core)"
    )
    parser.add_argument(
        "--server-decode",
        action="store_true",
        help="send encoded files for the server to decode (thin clients)",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        help="run the published model in process (onnxruntime, no server; extra [offline])",
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this machine's processes; ray: Ray Data tasks and an actor pool of "
        "--concurrency classifiers (extra [batch])",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (HOST:PORT, or auto) instead of starting a local Ray [env RAY_ADDRESS]",
    )
    parser.add_argument("--model", default="", help="model name (default: the server's 'mnist')")
    parser.add_argument("--model-version", default="", help="model version (default: the served one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _connection_args(parser)
    return parser


def _load_labels(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False, mmap_mode="r")
    return read_idx(path)


def _arrays(args: argparse.Namespace) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    if not args.mnist_test:
        return []
    from mnist_serving.common.mnist_data import load_mnist

    data = load_mnist()
    return [("mnist-test", data.x_test, data.y_test)]


def _backend(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[object, bool]:
    """The backend, and whether files are to be sent encoded (server-side decoding)."""
    if args.model_repository is not None:
        return LocalBackend(args.model_repository, args.probabilities, args.model, args.model_version), False
    client = stack.enter_context(_client(args))
    server_decode = args.server_decode
    if not server_decode and (args.inputs or args.files_from):
        theirs = client.preprocessing_version(args.model or MODEL_NAME)
        if theirs != PREPROCESSING_VERSION:
            print(
                f"mnist-classify: the server preprocesses with version {theirs or 'unknown'}, this client "
                f"with {PREPROCESSING_VERSION}; sending files for the server to decode (--server-decode)",
                file=sys.stderr,
            )
            server_decode = True
    return ServerBackend(client, args.probabilities, args.model, args.model_version), server_decode


def _engine(args: argparse.Namespace, backend: object, server_decode: bool) -> Job | RayEngine:
    if args.engine == "local":
        return Job(backend, args.concurrency, args.decode_workers, server_decode)
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'mnist-serving[batch]'") from None
    from mnist_serving.client.batch.ray_engine import BackendSpec, RayEngine

    spec = BackendSpec(
        args.model_repository,
        args.probabilities,
        args.model,
        args.model_version,
        {} if args.model_repository is not None else _client_options(args),
    )
    return RayEngine(spec, args.ray_address, server_decode, args.concurrency, args.decode_workers)


def run_classify(args: argparse.Namespace) -> int:
    if not (args.inputs or args.files_from or args.mnist_test):
        raise InputError("no inputs: give image files, directories, IDX/.npy/.npz files, - or --mnist-test")
    if args.resume and args.output is None:
        raise InputError("--resume needs --output: the file whose rows to keep")
    if args.format == "parquet" and args.output is None:
        raise InputError("--format parquet writes a dataset of part files: give --output DIR")
    first_part = 0
    resume = Resume()
    if args.resume and args.format == "parquet":
        done, last, first_part = completed_parquet(args.output, args.probabilities)
    else:
        resume = completed(args.output, args.format, args.probabilities) if args.resume else resume
        done, last = resume.rows, resume.last
    labels = _load_labels(args.labels) if args.labels is not None else None
    found = Inputs()
    summary = Summary(skipped=done)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.engine == "local" and (args.inputs or args.files_from):
            start_decode_server()
        backend, server_decode = _backend(args, stack)
        job = _engine(args, backend, server_decode)
        stack.callback(job.close)
        columns = TableColumns(args.image_column, args.label_column or "label", args.label_column is not None)
        listed = listed_inputs(args.files_from)
        stream = chunks(args.inputs, args.batch_size, found, _arrays(args), columns, listed)
        stream = _skip(stream, done, last)
        if args.format == "parquet":
            if not args.resume and args.output.exists() and any(args.output.glob("part-*.parquet")):
                raise InputError(f"{args.output}: already holds part files; --resume, or another directory")
            writer = ParquetWriter(args.output, args.probabilities, first_part, args.part_rows)
        else:
            out = args.output.open("a" if done else "w", newline="") if args.output else sys.stdout
            if args.output:
                stack.callback(out.close)
            writer = Writer(out, args.format, args.probabilities, write_header=not done)
        bar = tqdm(unit="img", file=sys.stderr, disable=args.no_progress or None, desc="classifying")
        stack.callback(bar.close)
        position = done

        def write(rows: list[Row]) -> None:
            nonlocal position
            if resume.keep_bytes is not None:  # the job is the same: cut the torn last line now
                out.truncate(resume.keep_bytes)
                resume.keep_bytes = None
            for row in rows:
                if labels is not None and position < len(labels):
                    row.truth = int(labels[position])
                position += 1
                summary.failed += row.error is not None
                if row.truth is not None and row.label is not None:
                    summary.known += 1
                    summary.correct += row.label == row.truth
            writer.write(rows)
            summary.written += len(rows)
            bar.update(len(rows))

        try:
            for _ in job.run(stream, write):
                pass
            if isinstance(writer, ParquetWriter):
                writer.close()
        except KeyboardInterrupt:
            job.stopping = True
            if isinstance(writer, ParquetWriter):
                writer.close()  # the rows in hand are whole and in order: one last part
            else:
                out.flush()  # every row written so far is on disk, whole
            _print_summary(summary, found, time.perf_counter() - started, interrupted=True)
            # A call in flight can hold a caller thread in gRPC's core for as long as its
            # server takes; the output is complete, so exit now instead of waiting on it
            # (decode processes die with this one).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
    if summary.written + done == 0:
        raise InputError("no images found in the inputs")
    if labels is not None and position != len(labels):
        print(f"mnist-classify: --labels has {len(labels)} labels for {position} images", file=sys.stderr)
    _print_summary(summary, found, time.perf_counter() - started)
    return 3 if summary.failed else 0


def _skip(stream: Iterator[Chunk], count: int, last: tuple[str, int] | None) -> Iterator[Chunk]:
    """Leave out the first ``count`` rows (already written), checking they are the same images."""
    seen = 0
    for chunk in stream:
        if seen >= count:
            yield chunk
            continue
        names = chunk.names()
        take = min(len(chunk), count - seen)
        seen += take
        if seen == count and last is not None and names[take - 1] != last:
            raise InputError(
                f"--resume: the output's last row is {last[0]}#{last[1]}, but the inputs have "
                f"{names[take - 1][0]}#{names[take - 1][1]} there; not the same job"
            )
        if take < len(chunk):
            yield _tail(chunk, take)
    if seen < count:
        raise InputError(f"--resume: the output has {count} rows, the inputs only {seen}; not the same job")


def _tail(chunk: Chunk, start: int) -> Chunk:
    labels = None if chunk.labels is None else chunk.labels[start:]
    if chunk.array is not None:
        return Chunk(source=chunk.source, start=chunk.start + start, array=chunk.array[start:], labels=labels)
    if chunk.blobs is not None:
        return Chunk(source=chunk.source, start=chunk.start + start, blobs=chunk.blobs[start:], labels=labels)
    return Chunk(files=chunk.files[start:], stdin=chunk.stdin)


def _print_summary(summary: Summary, found: Inputs, seconds: float, interrupted: bool = False) -> None:
    rate = summary.written / max(seconds, 1e-9)
    text = f"{summary.written} rows written in {seconds:.2f} s ({rate:,.0f} images/s)"
    if summary.failed:
        text += f", {summary.failed} failed (rows with an error)"
    skipped = summary.skipped + found.skipped
    if skipped:
        text += f", {skipped} skipped ({summary.skipped} already in the output, {found.skipped} not images)"
    if summary.known:
        text += f"; accuracy {summary.correct / summary.known:.4f} ({summary.correct}/{summary.known})"
    if interrupted:
        text += "; interrupted: the output holds every row up to the last one written (--resume continues)"
    print(text, file=sys.stderr)


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
            **metadata_document(model),
            "preprocessing_version": model.parameters["preprocessing_version"].string_param
            if "preprocessing_version" in model.parameters
            else None,
        },
        "client": {"preprocessing_version": PREPROCESSING_VERSION},
    }
    print(json.dumps(info, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    workers_skip_the_main_script("mnist_serving.client.batch")
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"health": run_health, "info": run_info}
    # The subcommand may follow connection options (`--server X health`), unless a file has its name.
    command = next((a for a in argv if a in commands and not Path(a).exists()), None)
    try:
        if command is not None:
            argv.remove(command)
            return commands[command](argv)
        return run_classify(classify_parser().parse_args(argv))
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; later flushes of stdout must not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (InputError, IdxError, ResumeError, ModelUnavailable, OSError) as exc:
        print(f"mnist-classify: {exc}", file=sys.stderr)
        return 2
    except ClassifyError as exc:
        print(f"mnist-classify: server error {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
