"""The runner: small runs on one session, runs of BIG_RUN images or more on the other."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_serving.server.runner import BIG_RUN, CPU, OnnxRunner
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
