"""The model repository layout, shared by the exporter (writer) and the server (reader).

Laid out like Triton's: ``<root>/<model name>/<version>/model.onnx`` plus a sidecar
``model.json``. Versions are positive integers; a version directory appears only by an
atomic rename of a complete, verified directory, so readers never see half a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mnist_serving.common.contract import MODEL_FILENAME, SIDECAR_FILENAME

_VERSION_DIR = re.compile(r"^[1-9][0-9]{0,8}$")
# The highest version ever published under a model, kept beside the versions so that a
# deleted version's number is never given to a different model (clients pin versions).
HIGHEST_VERSION_FILE = ".highest-version"


def env_flag(name: str) -> bool:
    """A boolean switch from the environment: 1/true/yes/on; empty or unset is off."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def model_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name


def list_versions(root: str | Path, name: str) -> list[int]:
    """Published versions of a model, ascending; staging and stray entries are ignored."""
    directory = model_dir(root, name)
    if not directory.is_dir():
        return []
    return sorted(
        int(entry.name) for entry in directory.iterdir() if _VERSION_DIR.match(entry.name) and entry.is_dir()
    )


def highest_version(root: str | Path, name: str) -> int:
    """The highest version ever published (deleted ones included), 0 for none."""
    directory = model_dir(root, name)
    versions = list_versions(root, name)
    try:
        recorded = int((directory / HIGHEST_VERSION_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        recorded = 0
    return max([recorded, *versions])


def _record_highest(root: str | Path, name: str, version: int) -> None:
    directory = model_dir(root, name)
    if highest_version(root, name) > version:
        return
    fd, temp = tempfile.mkstemp(prefix=".highest-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{version}\n")
    os.chmod(temp, 0o644)
    os.replace(temp, directory / HIGHEST_VERSION_FILE)


def version_dir(root: str | Path, name: str, version: int) -> Path:
    return model_dir(root, name) / str(int(version))


class VersionRefused(ValueError):
    """A published version whose sidecar does not vouch for its bytes: never to be served."""


def check_sidecar(directory: Path, sidecar: dict, model_bytes: bytes) -> None:
    """The exporter's own verdicts must say this version passed, for these exact bytes.

    Whoever runs a published model calls this: the server before serving a version, the
    client before running one in process (``mnist-classify --model-repository``).
    """
    if not sidecar.get("parity", {}).get("passed"):
        raise VersionRefused(f"{directory}: sidecar does not record a passed parity check")
    if "quantization" in sidecar and not sidecar["quantization"].get("passed"):
        raise VersionRefused(f"{directory}: sidecar does not record a passed quantisation check")
    expected = sidecar.get("model_sha256")
    if not expected:
        raise VersionRefused(f"{directory}: sidecar has no model_sha256; nothing vouches for these bytes")
    if hashlib.sha256(model_bytes).hexdigest() != expected:
        raise VersionRefused(f"{directory}: {MODEL_FILENAME} does not match the sidecar's SHA-256")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of a version directory (or of a model.onnx path's directory)."""
    path = Path(path)
    directory = path.parent if path.suffix == ".onnx" else path
    return json.loads((directory / SIDECAR_FILENAME).read_text())


def publish(root: str | Path, name: str, write: Callable[[Path, int], None]) -> tuple[int, Path]:
    """Stage a new version in a hidden directory, let ``write`` fill it, then rename it in.

    ``write(staging_dir, version)`` must create model.onnx and the sidecar; if it raises,
    the staging directory is removed and no version appears.
    """
    directory = model_dir(root, name)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
    try:
        while True:
            version = highest_version(root, name) + 1
            write(staging, version)
            for required in (MODEL_FILENAME, SIDECAR_FILENAME):
                if not (staging / required).is_file():
                    raise RuntimeError(f"publish: {required} was not written")
            os.chmod(staging, 0o755)
            target = version_dir(root, name, version)
            try:
                os.rename(staging, target)  # atomic; fails if a concurrent publisher won
            except OSError:
                if target.exists():
                    continue
                raise
            _record_highest(root, name, version)
            return version, target
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def published_model(root: str | Path, name: str) -> Path | None:
    """The newest published model file of ``name``, or None (used to skip one-shot jobs)."""
    versions = list_versions(root, name)
    for version in reversed(versions):
        path = version_dir(root, name, version) / MODEL_FILENAME
        if path.is_file():
            return path
    return None
