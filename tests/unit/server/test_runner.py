"""The runner: small runs on one session, runs of BIG_RUN images or more on the other."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mnist_serving.server import runner as runner_module
from mnist_serving.server.errors import StartupError
from mnist_serving.server.runner import BIG_RUN, CPU, CUDA, OnnxRunner
from tests.unit.conftest import digit, tiny_model_bytes


def test_big_runs_go_to_the_many_thread_session_and_answer_the_same():
    runner = OnnxRunner(Path("tiny.onnx"), [CPU], (1, 2), model_bytes=tiny_model_bytes())
    assert runner.big_session is not runner.session and runner.threads == (1, 2)
    images = np.stack([digit(i % 10) for i in range(BIG_RUN)])
    calls = []
    for name in ("session", "big_session"):
        session = getattr(runner, name)

        class Counting:
            def run(self, *args, session=session, name=name):
                calls.append(name)
                return session.run(*args)

        setattr(runner, name, Counting())
    big = runner.run(images)
    small = runner.run(images[: BIG_RUN - 1])
    assert calls == ["big_session", "session"]
    assert big[1].tolist() == [i % 10 for i in range(BIG_RUN)]
    assert np.array_equal(small[0], big[0][: BIG_RUN - 1])


def test_one_thread_count_makes_one_session():
    runner = OnnxRunner(Path("tiny.onnx"), [CPU], 1, model_bytes=tiny_model_bytes())
    assert runner.big_session is runner.session


@pytest.mark.parametrize(
    ("threads", "expected"), [((1, 2), BIG_RUN), ((1, 1), None), ((2, 2), None), (0, None)]
)
def test_only_a_many_thread_session_of_its_own_takes_every_core(threads, expected):
    """Runs that take every core may run on the event loop; with one session (one thread,
    or a thread count pinned by --intra-op-threads) nothing does."""
    runner = OnnxRunner(Path("tiny.onnx"), [CPU], threads, model_bytes=tiny_model_bytes())
    assert runner.every_core_from == expected


def test_device_cuda_is_refused_when_the_session_itself_runs_on_the_cpu():
    """onnxruntime answers a CUDA request it cannot meet with a CPU session and a log line;
    the runner reads the session's own providers and refuses, naming why CUDA did not start."""
    with pytest.raises(
        StartupError, match=r"--device cuda: onnxruntime could not start CUDAExecutionProvider .*\(.+\)"
    ):
        OnnxRunner(Path("tiny.onnx"), [CUDA, CPU], 1, model_bytes=tiny_model_bytes(), device="cuda")


def test_device_auto_falls_back_to_the_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mnist_serving.server.runner"):
        runner = OnnxRunner(Path("tiny.onnx"), [CUDA, CPU], 1, model_bytes=tiny_model_bytes(), device="auto")
    assert runner.provider == CPU
    assert "--device auto: CUDAExecutionProvider is installed but not active" in caplog.text


def test_the_reason_names_the_missing_library(monkeypatch, tmp_path):
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"not a library")
    monkeypatch.setattr(runner_module.ort, "__file__", str(tmp_path / "onnxruntime" / "__init__.py"))
    assert "libonnxruntime_providers_cuda.so" in runner_module.cuda_unavailable_reason()
    (capi / "libonnxruntime_providers_cuda.so").unlink()
    assert "install onnxruntime-gpu" in runner_module.cuda_unavailable_reason()
