"""Regenerate the Python gRPC stubs: ``python -m mnist_serving.protos.generate`` (or ``make protos``).

``inference/grpc_service.proto`` and ``inference/model_config.proto`` are Triton's, vendored
unchanged (``inference/UPSTREAM.md``). Two edits are made on the way to protoc, here and
nowhere else:

- Triton's ``import "model_config.proto"`` becomes ``inference/model_config.proto``, so both
  files live in the ``inference`` package directory;
- ``ModelMetadataResponse`` gains ``parameters = 6`` (MLServer has the same field), where the
  server states its preprocessing version; Triton's clients skip it as an unknown field.

protoc writes absolute imports (``from mnist.v1 import ...``); they are rewritten to the
``mnist_serving.protos.gen`` package so no generic top-level module is ever installed.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTOS = ("mnist/v1/classifier.proto", "inference/grpc_service.proto", "inference/model_config.proto")
PACKAGE = "mnist_serving.protos.gen"
_IMPORT = re.compile(r"^from (mnist\.v1|inference) import", re.MULTILINE)
# (file, upstream text, replacement): each must match exactly once, or generation stops.
EDITS = (
    (
        "inference/grpc_service.proto",
        'import "model_config.proto";',
        'import "inference/model_config.proto";',
    ),
    (
        "inference/grpc_service.proto",
        "  repeated TensorMetadata outputs = 5;\n}",
        "  repeated TensorMetadata outputs = 5;\n\n"
        "  // mnist-serving: model parameters (preprocessing_version), as MLServer has them.\n"
        "  map<string, InferParameter> parameters = 6;\n}",
    ),
)


def sources(out_dir: Path) -> Path:
    """The .proto files as protoc reads them (vendored text with ``EDITS`` applied)."""
    root = out_dir / "proto"
    for name in PROTOS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROTO_ROOT / name, root / name)
    for name, old, new in EDITS:
        path = root / name
        text = path.read_text()
        if text.count(old) != 1:
            raise RuntimeError(f"{name}: expected one '{old[:40]}...' to edit; upstream changed?")
        path.write_text(text.replace(old, new))
    return root


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpc_tools) into ``out_dir`` and fix imports; returns the files written."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = sources(Path(tmp))
        args = [
            "protoc",
            f"-I{root}",
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
