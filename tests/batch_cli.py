"""`mnist-classify` run as its users run it (a subprocess), and the inputs its tests share."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

EXE = str(Path(sys.executable).parent / "mnist-classify")
EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"


def classify(
    *args: str,
    server=None,
    stdin: bytes | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict | None = None,
):
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
