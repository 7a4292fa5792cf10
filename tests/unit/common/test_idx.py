import gzip

import numpy as np
import pytest

from mnist_serving.common.idx import IdxError, encode_idx, parse_idx, read_idx, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_every_type(tmp_path, dtype):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        back = read_idx(write_idx(tmp_path / name, array))
        assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_gzip_detected_by_content_not_name():
    array = np.arange(10, dtype=np.uint8)
    assert np.array_equal(parse_idx(gzip.compress(encode_idx(array))), array)


def test_header_layout_is_the_standard_one():
    data = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "element type"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x00", "needs 3"),
        (b"\x1f\x8bnot gzip", "gzip"),
    ],
)
def test_malformed_files_are_refused_with_a_reason(data, message):
    with pytest.raises(IdxError, match=message):
        parse_idx(data)
