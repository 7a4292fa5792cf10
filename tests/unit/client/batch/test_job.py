"""A job's decode pool: a worker killed mid-job costs neither rows nor the job."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_serving.client.batch.job import Job, Row
from mnist_serving.client.batch.sources import Chunk
from mnist_serving.client.results import BatchResult


class InkBackend:
    """Answers how many pixels are inked, so every answer depends on a decoded image."""

    def classify_raw(self, images: np.ndarray) -> BatchResult:
        labels = (images > 0).sum(axis=(1, 2)).astype(np.int64)
        return BatchResult(labels, np.ones(len(images), np.float32), None, "ink", "1")

    def classify_encoded(self, blobs: list[bytes]) -> BatchResult:
        raise AssertionError("the job decodes here")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_a_decode_worker_killed_mid_job_costs_no_row(tmp_path):
    image = Image.new("L", (28, 28), 255)
    image.paste(0, (12, 4, 16, 24))  # a dark vertical stroke
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    files = []
    for i in range(12):
        (tmp_path / f"{i:02d}.png").write_bytes(buffer.getvalue())
        files.append(str(tmp_path / f"{i:02d}.png"))
    chunks = [Chunk(files=files[i : i + 3]) for i in range(0, len(files), 3)]
    job = Job(InkBackend(), concurrency=1, decode_workers=2)
    written: list[Row] = []
    killed: list[int] = []

    def write(rows: list[Row]) -> None:
        written.extend(rows)
        if not killed:  # after the first chunk: every decode worker of the pool, with SIGKILL
            for server in _children(os.getpid()):  # this process's fork server, not a server's
                if b"forkserver" not in Path(f"/proc/{server}/cmdline").read_bytes():
                    continue  # (a server under test: its processes are not this job's)
                for worker in _children(server):
                    os.kill(worker, signal.SIGKILL)
                    killed.append(worker)

    try:
        for _ in job.run(iter(chunks), write):
            pass
    finally:
        job.close()
    assert killed  # the workers existed, and were killed
    assert [row.source for row in written] == files
    assert all(row.error is None for row in written), [row.error for row in written if row.error]
    assert len({row.label for row in written}) == 1 and written[0].label > 0
