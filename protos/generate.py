"""Regenerate the Python gRPC stubs: ``python -m mnist_serving.protos.generate`` (or ``make protos``).

protoc writes absolute imports (``from mnist.v1 import ...``); they are rewritten to the
``mnist_serving.protos.gen`` package so no generic top-level module is ever installed.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTOS = ("mnist/v1/classifier.proto", "inference/grpc_predict_v2.proto")
PACKAGE = "mnist_serving.protos.gen"
_IMPORT = re.compile(r"^from (mnist\.v1|inference) import", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpc_tools) into ``out_dir`` and fix imports; returns the files written."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = []
    for path in sorted(out_dir.rglob("*_pb2*.py*")):
        text = _IMPORT.sub(lambda m: f"from {PACKAGE}.{m.group(1)} import", path.read_text())
        path.write_text(text)
        written.append(path)
    return written


def main() -> int:
    target = PROTO_ROOT / "gen"
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        for path in files:
            destination = target / path.relative_to(tmp)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(path.read_text())
            print(f"wrote {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
