"""The server under the supervisors people run it with: `timeout` and GNU make signal the
process and its group (the same signal twice, a millisecond apart), a terminal's Ctrl-C
reaches every process of the group, and `taskset` narrows the CPUs it may use."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mnist_serving.client import ClassifyError, Client
from mnist_serving.common.cpus import available_cpus
from tests.helpers import wait_until
from tests.process_tree import descendants
from tests.server_process import wait_serving

ROOT = Path(__file__).parents[2]
VENV = Path(sys.executable).parents[1]


def drained_cleanly(log: str) -> None:
    assert re.search(r"SIG(TERM|INT): draining", log), log[-3000:]
    assert "stopped" in log, log[-3000:]
    assert "exiting at once" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_timeout_signals_twice_and_the_server_still_drains(start_server):
    server = start_server(prefix=("timeout", "600"))  # timeout forwards to the server and its group
    assert server.stop() == 0
    drained_cleanly(server.log_text())


def held_call(server) -> threading.Thread:  # noqa: ANN001
    """A call that waits in the batcher (--max-batch-delay) while the test signals the server."""
    answers: list = []

    def call() -> None:
        with Client(server.address, retries=0, timeout=60) as client:
            try:
                answers.append(client.classify(np.zeros((28, 28), np.uint8)).label)
            except ClassifyError as exc:  # a server told to exit at once cuts it
                answers.append(exc.code)

    thread = threading.Thread(target=call)
    thread.answers = answers
    thread.start()
    wait_until(
        lambda: server.metric("mnist_serving_inflight_requests") >= 1,
        60,
        "the call to be in flight",
        interval=0.02,
    )
    return thread


def test_the_same_signal_twice_within_a_second_does_not_cut_the_drain(start_server):
    server = start_server("--max-batch-delay", "3000000")  # a call waits 3 s for company
    call = held_call(server)
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: draining" in server.log_text(), 60, "the drain to begin", interval=0.02)
    server.process.send_signal(signal.SIGTERM)  # the group's copy, a moment later
    call.join(60)
    assert len(call.answers) == 1 and isinstance(call.answers[0], int)  # answered, not cut off
    assert server.process.wait(timeout=60) == 0
    server.stop_called = True
    log = server.log_text()
    drained_cleanly(log)
    assert "SIGTERM again within 1 s" in log


def test_a_second_ctrl_c_after_a_second_still_exits_at_once(start_server):
    server = start_server("--max-batch-delay", "30000000")  # a drain that would take 30 s
    call = held_call(server)
    server.process.send_signal(signal.SIGINT)
    wait_until(lambda: "SIGINT: draining" in server.log_text(), 60, "the drain to begin", interval=0.02)
    time.sleep(1.2)  # what is tested: a signal more than a second after the first is a second one
    started = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 1 and time.monotonic() - started < 10
    assert "second signal (SIGINT): exiting at once" in server.log_text()
    server.stop_called = True
    call.join(60)
    assert call.answers == ["UNAVAILABLE"]  # what exiting at once means for a call in flight


def test_ctrl_c_on_make_run_drains_without_a_traceback(model_repository):
    serve_args = "--host 127.0.0.1 --port 0 --metrics-port 0 --http-port 0"
    make = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "-o",
            f"{VENV}/.installed-run",  # installed already: make must not reinstall it here
            "run",
            f"VENV={VENV}",
            f"MODELS={model_repository}",
            f"SERVE_ARGS={serve_args}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )
    output = []
    try:
        for line in make.stdout:
            output.append(line)
            if line.startswith("serving gRPC on"):
                break
        else:
            raise AssertionError("make run never served:\n" + "".join(output)[-3000:])
        port = int(line.rsplit(":", 1)[1])
        wait_serving(f"127.0.0.1:{port}")
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        output.extend(make.stdout)
        make.wait(timeout=60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
    drained_cleanly("".join(output))


def _fork_server(server) -> int:
    """The decode pool's fork server: the server's child that multiprocessing started."""
    (pid,) = [
        pid
        for pid in descendants(server.process.pid, depth=1)
        if "forkserver" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    return pid


def _decode_workers(server) -> int:
    """The processes the decode pool's fork server has forked."""
    return len(descendants(_fork_server(server)))


def test_taskset_one_cpu_starts_one_decode_worker(start_server):
    pinned = start_server(prefix=("taskset", "-c", "0"))
    assert _decode_workers(pinned) == 1
    if available_cpus() > 1:  # unpinned, one per CPU this process may use
        automatic = start_server()
        assert _decode_workers(automatic) == available_cpus()


def test_decode_processes_leave_signals_to_the_server_and_load_no_model(start_server):
    """multiprocessing's resource tracker, the fork server and every decode worker ignore SIGINT
    and SIGTERM: a signal to the whole group is the server's to act on (it drains, then stops
    them). None of them loads onnxruntime: they import the decoder, not the console script's
    whole server; and the server's own process does not load the decoder (OpenCV)."""
    server = start_server("--decode-workers", "2")
    children = descendants(server.process.pid)
    assert len(children) == 4  # the resource tracker, the fork server and two workers
    server_maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in server_maps and "/cv2/" not in server_maps
    assert _decode_workers(server) == 2
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
        for sig in (signal.SIGINT, signal.SIGTERM):
            assert ignored & (1 << (sig - 1)), f"process {pid} does not ignore {sig.name}"
        assert "onnxruntime" not in Path(f"/proc/{pid}/maps").read_text(), f"process {pid}"
    assert "/cv2/" in Path(f"/proc/{_fork_server(server)}/maps").read_text()  # the decoder is there
