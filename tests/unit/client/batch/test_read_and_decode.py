"""A decode worker's reading of the files it is given: whatever sits at a path, it answers."""

from __future__ import annotations

import io
import os
import threading

from PIL import Image

from mnist_serving.client.batch.job import read_and_decode


def _digit_png() -> bytes:
    image = Image.new("L", (28, 28), 255)
    image.paste(0, (12, 4, 16, 24))  # a dark vertical stroke: a 1
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_pipe_a_directory_and_a_missing_file_with_image_names_are_error_rows(tmp_path):
    """A named pipe would block a plain open() until something writes to it, holding the
    worker and the whole job; it is refused at once, as a directory and a missing file are."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "good.png").write_bytes(_digit_png())
    names = [str(tmp_path / n) for n in ("pipe.png", "folder.png", "gone.png", "good.png")]
    found: list = []
    worker = threading.Thread(target=lambda: found.append(read_and_decode(names, None, True)), daemon=True)
    worker.start()
    worker.join(timeout=60)  # a bound on a failure, not a timing: it returns in milliseconds
    assert not worker.is_alive(), "reading a named pipe blocked"
    decoded = found[0]
    assert decoded.rows == [3] and decoded.images.shape == (1, 28, 28)
    assert decoded.errors[0] == f"{names[0]}: cannot read (not a regular file (a pipe, socket or device))"
    assert decoded.errors[1] == f"{names[1]}: cannot read (Is a directory)"
    assert decoded.errors[2] == f"{names[2]}: cannot read (No such file or directory)"


def test_without_decoding_the_bytes_and_the_reasons_come_back_in_order(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "good.png").write_bytes(b"any bytes")
    blobs = read_and_decode([str(tmp_path / "good.png"), str(tmp_path / "pipe.png")], None, False)
    assert blobs[0] == b"any bytes"
    assert blobs[1].endswith("cannot read (not a regular file (a pipe, socket or device))")


def test_relative_names_are_read_from_base_and_named_as_given(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"bytes")
    assert read_and_decode(["sub/x.png"], None, False, base=str(tmp_path)) == [b"bytes"]
