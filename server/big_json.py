"""A big JSON infer body's tensor, parsed a slice at a time.

Parsed whole, a 16 MB JSON body of pixel values becomes millions of Python objects (about 18
times the body in memory) and holds the event loop and the GIL for tenths of a second, so
gRPC health and every other call wait. Above ``LARGE_BODY`` the tensor's ``data`` array is
cut out of the text: the rest (names, shape, outputs) is parsed as usual, and the numbers
go into one preallocated array in slices of ``SLICE`` bytes, each parsed by orjson in about a
millisecond, with the event loop free between slices. Memory stays within about three times
the body (the body, float32 values, the uint8 pixels).
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import orjson

from mnist_serving.common.contract import IMAGE_PIXELS, IMAGE_SHAPE
from mnist_serving.server import codec
from mnist_serving.server.errors import InvalidInput

LARGE_BODY = 1 << 20
SLICE = 64 * 1024  # about a millisecond of orjson and numpy
SCAN = 1 << 20  # bytes checked for the end of the numbers between yields (about 0.5 ms)
REST_LIMIT = 64 * 1024  # JSON besides the data array in a big body (names, shape, outputs)
_DATA = re.compile(rb'"data"\s*:\s*\[')
_NUMBER_BYTES = b" \t\r\n0123456789.eE+-,[]"
_NOT_NUMBER = re.compile(rb"[^ \t\r\n0-9.eE+\-,\[\]]")
FIELD = "inputs[0].data"


async def json_request(
    body: bytes | bytearray, header_length: str | None, max_images: int
) -> tuple[np.ndarray, dict, tuple[str, ...]]:
    """``codec.json_request``, with a big JSON body's numbers parsed in slices."""
    if header_length is not None or len(body) <= LARGE_BODY:
        return codec.json_request(bytes(body), header_length, max_images)
    found = _DATA.search(body)
    if found is None:
        raise InvalidInput(
            f"{len(body)} bytes without a 'data' array; a body over {LARGE_BODY} bytes carries its "
            "tensor as inputs[0].data, or as binary data after the JSON",
            "request body",
        )
    start = found.end() - 1  # the array's '['
    end = body.rfind(b"]", start, await _numbers_end(body, start)) + 1
    if end <= start:
        raise InvalidInput("expected a (nested) list of numbers", FIELD)
    rest = len(body) - (end - start)
    if rest > REST_LIMIT:  # 16 MB of extra inputs would be millions of Python objects too
        raise InvalidInput(
            f"{rest} bytes of JSON besides inputs[0].data; at most {REST_LIMIT} in a body over "
            f"{LARGE_BODY} bytes",
            "request body",
        )
    header = codec.parse_json(bytes(body[:start]) + b"null" + bytes(body[end:]))
    tensor, count, datatype, requested = codec.json_header(header, max_images)
    if "data" not in tensor or tensor["data"] is not None:  # the first "data" was another key's
        raise InvalidInput(f"a body over {LARGE_BODY} bytes must give inputs[0].data first", FIELD)
    values = await _numbers(body, start, end, count * IMAGE_PIXELS, datatype)  # checked in range
    images = values.astype(np.uint8) if datatype == "UINT8" else np.rint(values * 255.0).astype(np.uint8)
    return images.reshape(count, *IMAGE_SHAPE), header, requested


async def _numbers_end(body: bytes | bytearray, start: int) -> int:
    """Where the characters that can make up a list of numbers end, after ``start``."""
    position = start
    while position < len(body):
        chunk = body[position : position + SCAN]
        if chunk.translate(None, _NUMBER_BYTES):  # something else is in this chunk
            return _NOT_NUMBER.search(body, position, position + SCAN).start()
        position += SCAN
        await asyncio.sleep(0)
    return len(body)


async def _numbers(body: bytes | bytearray, start: int, end: int, size: int, datatype: str) -> np.ndarray:
    """The numbers of body[start:end] (a nested list) → float32 [size], a slice at a time."""
    values = np.empty(size, dtype=np.float32)
    kinds = "iu" if datatype == "UINT8" else "iuf"
    filled, position, depth = 0, start, 0
    while position < end:
        cut = body.find(b",", min(position + SLICE, end), end)
        cut = end if cut < 0 else cut
        piece = body[position:cut]
        depth += piece.count(b"[") - piece.count(b"]")  # the brackets must close where the list does
        text = piece.translate(None, b"[]").strip(b" \t\r\n,")
        position = cut + 1
        if not text:
            continue
        try:
            part = np.asarray(orjson.loads(b"[" + text + b"]"))
        except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
            raise InvalidInput("expected a (nested) list of numbers", FIELD) from None
        if part.dtype.kind not in kinds or part.ndim != 1:
            expected = "integers" if datatype == "UINT8" else "numbers"
            raise InvalidInput(f"expected a (nested) list of {expected}", FIELD)
        if filled + part.size > size:
            raise InvalidInput(f"more than the {size} values the shape needs", FIELD)
        if datatype == "UINT8" and part.size and (part.min() < 0 or part.max() > 255):
            raise InvalidInput("values outside 0..255 for UINT8", FIELD)
        if datatype == "FP32":
            codec.float_to_pixels(part, FIELD)  # NaN, Inf and values outside [0, 1] are refused
        values[filled : filled + part.size] = part
        filled += part.size
        await asyncio.sleep(0)  # the event loop (health, other calls) runs between slices
    if depth != 0:
        raise InvalidInput("expected a (nested) list of numbers; its brackets do not match", FIELD)
    if filled != size:
        raise InvalidInput(f"{filled} values; the shape needs {size}", FIELD)
    return values
