"""`mnist-classify` run against real servers, and the inputs its tests share.

``classify`` runs the CLI's own ``main`` in the test's process: the same argument parsing,
job, decode processes and gRPC calls to a real server, without importing the batch stack
anew for every run (about a CPU-second each). ``classify_process`` runs the console script
as its users run it, for what only a process shows: its environment, signals, exit status.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from mnist_serving.client.batch import cli

EXE = str(Path(sys.executable).parent / "mnist-classify")
EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"


def classify(
    *args: str, server=None, stdin: bytes | None = None, timeout: float = 300, cwd: Path | None = None
) -> tuple[int, str, str]:
    """(exit code, standard output, standard error) of ``mnist-classify --no-progress ARGS``."""
    argv = ["--no-progress", *args] + (["--server", server.address] if server else [])
    return run_main(argv, stdin, timeout, cwd)


def run_main(
    argv: list[str], stdin: bytes | None = None, timeout: float = 300, cwd: Path | None = None
) -> tuple[int, str, str]:
    """The CLI's ``main(argv)`` with its own standard streams and working directory, on this
    thread, as in a process of its own: its decode fork server dies with the thread that
    started it. A run still going after ``timeout`` seconds fails."""
    streams = [io.TextIOWrapper(io.BytesIO(), write_through=True) for _ in range(2)]

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"mnist-classify {' '.join(argv)} still running after {timeout} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    saved_stdin, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(stdin or b""))
    try:
        with (
            contextlib.chdir(cwd or Path.cwd()),
            contextlib.redirect_stdout(streams[0]),
            contextlib.redirect_stderr(streams[1]),
        ):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.stdin = saved_stdin
    out, err = (stream.buffer.getvalue().decode() for stream in streams)
    return code, out, err


def classify_process(
    *args: str,
    server=None,
    stdin: bytes | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict | None = None,
) -> tuple[int, str, str]:
    """The same, as a process of its own."""
    command = [EXE, "--no-progress", *args] + (["--server", server.address] if server else [])
    done = subprocess.run(
        command, input=stdin, capture_output=True, timeout=timeout, check=False, cwd=cwd, env=env
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def messy_inbox(tmp_path: Path, mnist) -> Path:
    """Good images of several kinds among corrupt, truncated, empty and non-image files."""
    root = tmp_path / "inbox"
    (root / "b-more").mkdir(parents=True)
    for example in sorted(EXAMPLES.iterdir()):
        shutil.copy(example, root / example.name)
    Image.fromarray(255 - mnist.x_test[0]).save(root / "b-more" / "mnist-7.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "truncated.jpg").write_bytes((EXAMPLES / "photo-4.jpg").read_bytes()[:400])
    (root / "empty.png").write_bytes(b"")
    (root / "README.txt").write_text("scans from the front desk")
    (root / "b-more" / "notes.json").write_text("{}")
    return root
