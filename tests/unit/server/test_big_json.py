"""Big REST bodies parsed in slices give exactly what the one-piece parser gives, and refuse
what it refuses, naming the field."""

import asyncio
import json

import numpy as np
import pytest

from mnist_serving.server import big_json, codec
from mnist_serving.server.errors import InvalidInput


def body(
    images: np.ndarray, datatype: str = "UINT8", nested: bool = True, before: str = "", after: str = ""
) -> bytes:
    values = images if datatype == "UINT8" else images / 255.0
    data = values.tolist() if nested else values.ravel().tolist()
    tensor = {"name": "image", "shape": list(images.shape), "datatype": datatype, "data": data}
    text = json.dumps({"id": "big", "inputs": [tensor], "outputs": [{"name": "label"}]})
    return text.replace('"data"', before + '"data"', 1).replace("}]", after + "}]", 1).encode()


@pytest.mark.parametrize(("datatype", "nested"), [("UINT8", True), ("UINT8", False), ("FP32", True)])
def test_slices_give_what_the_whole_parse_gives(datatype, nested):
    images = np.random.default_rng(0).integers(0, 256, (700, 28, 28), dtype=np.uint8)
    text = body(images, datatype, nested)
    assert len(text) > big_json.LARGE_BODY
    sliced, header, requested = asyncio.run(big_json.json_request(text, None, 65536))
    whole, whole_header, whole_requested = codec.json_request(text, None, 65536)
    assert np.array_equal(sliced, whole) and np.array_equal(sliced, images)
    assert header["id"] == "big" and requested == whole_requested == ("label",)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            b'{"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8"}], "pad": "'
            + b"x" * 2_000_000
            + b'"}',
            "without a 'data' array",
        ),
        (None, "inputs[0].data: expected a (nested) list of integers"),
        (None, "inputs[0].data: 548799 values; the shape needs 548800"),
        (None, "first: bytes of JSON besides inputs[0].data"),
        (None, "bytes of JSON besides inputs[0].data"),
    ],
)
def test_big_bodies_are_refused_like_small_ones(text, words):
    images = np.zeros((700, 28, 28), np.uint8)
    if words.endswith("integers"):
        text = body(images).replace(b"0, 0]", b"0, 0.5]", 1)
    elif "548799" in words:
        text = body(images).replace(b"0, 0]", b"0]", 1)
    elif words.startswith("first: "):  # another key's "data" first: the tensor is not where it must be
        words = words.removeprefix("first: ")
        text = body(images, before='"parameters": {"data": [1]}, ')
    elif "besides" in words:
        extra = json.dumps([{"name": "x", "shape": [1]}] * 10_000)[1:-1]
        text = body(images).replace(b'"inputs": [', b'"inputs": [' + extra.encode() + b", ", 1)
    with pytest.raises(InvalidInput) as info:
        asyncio.run(big_json.json_request(text, None, 65536))
    assert words in str(info.value)
