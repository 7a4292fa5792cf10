"""DynamicBatcher in isolation: a model function whose runs the test releases by hand."""

import asyncio
import threading
import time

import numpy as np
import pytest

from mnist_serving.common.contract import NUM_CLASSES
from mnist_serving.server.batcher import DynamicBatcher
from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.errors import DeadlineExpired, NotReady, Overloaded


class GatedModel:
    """Records each run's batch; blocks each run until the test opens the gate."""

    def __init__(self, gated: bool = True) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Semaphore(0 if gated else 10**6)
        self.started = threading.Event()

    def __call__(self, images):
        self.started.set()
        self.gate.acquire()
        self.batches.append(images.copy())
        n = len(images)
        probabilities = np.zeros((n, 10), np.float32)
        labels = images[:, 0, 0].astype(np.int64)  # the "label" is the first pixel: easy to check
        probabilities[np.arange(n), labels % 10] = 1
        return probabilities, labels

    def release(self, runs: int = 1) -> None:
        for _ in range(runs):
            self.gate.release()


def images(values):
    out = np.zeros((len(values), 28, 28), np.uint8)
    out[:, 0, 0] = values
    return out


def run(coro):
    return asyncio.run(coro)


async def wait_started(model: GatedModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.started.wait)


def test_concurrent_requests_share_one_run_and_get_their_own_rows():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64))
        first = asyncio.ensure_future(batcher.infer(images([1])))
        await wait_started(model)  # the first run is in progress; the rest queue behind it
        rest = [asyncio.ensure_future(batcher.infer(images([i, i]))) for i in range(2, 12)]
        await asyncio.sleep(0)
        model.release(2)
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return model, results

    model, results = run(go())
    assert [len(b) for b in model.batches] == [1, 20]
    assert results[0][1].tolist() == [1]
    for i, (_, labels) in zip(range(2, 12), results[1:], strict=True):
        assert labels.tolist() == [i, i]


def test_a_partial_batch_waits_for_the_running_one_and_gathers_what_arrives_meanwhile():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64))
        first = asyncio.ensure_future(batcher.infer(images([1])))
        await wait_started(model)
        second = asyncio.ensure_future(batcher.infer(images([2])))
        for _ in range(5):  # turns of the event loop, in which the worker could hand it over
            await asyncio.sleep(0)
        third = asyncio.ensure_future(batcher.infer(images([3])))
        await asyncio.sleep(0)
        model.release(3)  # enough for three runs, should the second have gone alone
        await asyncio.gather(first, second, third)
        await batcher.close()
        return model

    assert [b[:, 0, 0].tolist() for b in run(go()).batches] == [[1], [2, 3]]


def test_big_request_is_split_into_runs_and_reassembled():
    async def go():
        model = GatedModel(gated=False)
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=4))
        _, labels = await batcher.infer(images(list(range(10))))
        await batcher.close()
        return model, labels

    model, labels = run(go())
    assert [len(b) for b in model.batches] == [4, 4, 2]
    assert labels.tolist() == list(range(10))


def test_a_small_request_waits_behind_the_runs_handed_over_not_all_of_a_big_one():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=4))
        big = asyncio.ensure_future(batcher.infer(images([1] * 24)))  # six runs of 4
        await wait_started(model)  # its first run is in progress, the second handed over
        small = asyncio.ensure_future(batcher.infer(images([7])))
        await asyncio.sleep(0)
        model.release(7)
        results = await asyncio.gather(big, small)
        await batcher.close()
        return model, results

    model, (big, small) = run(go())
    # The small request runs right after the two runs already with the model thread (with
    # room left in its run, nothing of the big one joins it); four of the big one's wait.
    first_runs = [b[:, 0, 0].tolist() for b in model.batches[:3]]
    assert first_runs == [[1, 1, 1, 1], [1, 1, 1, 1], [7]]
    assert big[1].tolist() == [1] * 24 and small[1].tolist() == [7]


def test_the_next_batch_is_with_the_model_thread_before_the_running_one_ends():
    """The model thread goes from one run to the next without the event loop's help."""

    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=4))
        big = asyncio.ensure_future(batcher.infer(images([3] * 12)))  # three runs of 4
        await wait_started(model)
        # Block the event loop itself: only a run already handed over can start now.
        model.started.clear()
        model.release(1)
        handed_over = model.started.wait(timeout=10)
        model.release(2)
        _, labels = await big
        await batcher.close()
        return handed_over, labels

    handed_over, labels = run(go())
    assert handed_over, "the second run did not start while the event loop was busy"
    assert labels.tolist() == [3] * 12


def test_batching_off_runs_each_request_alone():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64, enabled=False))
        first = asyncio.ensure_future(batcher.infer(images([1])))
        await wait_started(model)
        rest = [asyncio.ensure_future(batcher.infer(images([i]))) for i in range(2, 6)]
        await asyncio.sleep(0)
        model.release(5)
        await asyncio.gather(first, *rest)
        await batcher.close()
        return model

    assert [len(b) for b in run(go()).batches] == [1, 1, 1, 1, 1]


def test_full_queue_refuses_at_once():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=8, max_queue=2))
        a = asyncio.ensure_future(batcher.infer(images([1])))
        await wait_started(model)
        b = asyncio.ensure_future(batcher.infer(images([2])))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.infer(images([3]))
        model.release(2)
        await asyncio.gather(a, b)
        model.release(1)
        _, labels = await batcher.infer(images([4]))  # service resumes once the queue drains
        await batcher.close()
        return batcher, labels

    model_batcher, labels = run(go())
    assert model_batcher.stats.refused_overload == 1 and labels.tolist() == [4]


def test_expired_and_cancelled_requests_are_dropped_before_inference():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64))
        # Two runs of 64: one running, one handed over; what comes next waits in the queue.
        first = asyncio.ensure_future(batcher.infer(images([1] * 128)))
        await wait_started(model)
        deadline = time.monotonic() + 0.001
        expiring = asyncio.ensure_future(batcher.infer(images([2]), deadline=deadline))
        cancelled = asyncio.ensure_future(batcher.infer(images([3])))
        kept = asyncio.ensure_future(batcher.infer(images([4])))
        await asyncio.sleep(0)
        cancelled.cancel()
        while time.monotonic() < deadline:  # let the deadline pass
            await asyncio.sleep(0)
        model.release(3)
        await first
        with pytest.raises(DeadlineExpired):
            await expiring
        _, labels = await kept
        await batcher.close()
        return model, batcher, labels

    model, batcher, labels = run(go())
    assert [b[:, 0, 0].tolist() for b in model.batches] == [[1] * 64, [1] * 64, [4]]
    assert batcher.stats.dropped_expired == 1 and batcher.stats.dropped_cancelled == 1
    assert labels.tolist() == [4]


def test_close_finishes_accepted_work_and_refuses_new():
    async def go():
        model = GatedModel()
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64))
        accepted = [asyncio.ensure_future(batcher.infer(images([i]))) for i in range(5)]
        await wait_started(model)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(NotReady):
            await batcher.infer(images([9]))
        model.release(5)
        results = await asyncio.gather(*accepted)
        await closing
        return [r[1][0] for r in results]

    assert run(go()) == [0, 1, 2, 3, 4]


def test_model_error_fails_the_whole_batch_and_the_batcher_survives():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.zeros((len(batch), 10), np.float32), np.zeros(len(batch), np.int64)

    async def go():
        batcher = DynamicBatcher(flaky, BatchingSettings(max_batch_size=8))
        # Both requests are queued before the worker runs, so they share the failing run.
        first = asyncio.ensure_future(batcher.infer(images([1])))
        second = asyncio.ensure_future(batcher.infer(images([2, 3])))
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        _, labels = await batcher.infer(images([4, 5]))
        await batcher.close()
        return outcomes, labels

    outcomes, labels = run(go())
    assert calls[0] == 3  # one run held both requests
    assert all(isinstance(o, RuntimeError) and str(o) == "boom" for o in outcomes)
    assert labels.tolist() == [0, 0] and calls[1:] == [2]


async def _yield_to_the_worker(times: int = 20) -> None:
    """Let every ready task (the batcher's worker among them) run: ordering, not time."""
    for _ in range(times):
        await asyncio.sleep(0)


def test_max_delay_waits_for_more_requests():
    async def go(delay):
        model = GatedModel(gated=False)
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64, max_delay_s=delay))
        tasks = [asyncio.ensure_future(batcher.infer(images([0])))]
        await _yield_to_the_worker()  # without a delay, the worker has taken request 0 alone
        tasks += [asyncio.ensure_future(batcher.infer(images([i]))) for i in (1, 2)]
        await asyncio.gather(*tasks)
        await batcher.close()
        return [len(b) for b in model.batches]

    assert run(go(0.5)) == [3]  # the first request waited, and the others joined it
    assert run(go(0.0))[0] == 1  # with no delay the first request does not wait for the others


def test_a_full_batch_does_not_wait_for_the_delay():
    async def go():
        model = GatedModel(gated=False)
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=2, max_delay_s=3600))
        # A one-hour delay: only a full batch can make this finish within the guard.
        await asyncio.wait_for(asyncio.gather(*(batcher.infer(images([i])) for i in (1, 2))), 60)
        await batcher.close()
        return [len(b) for b in model.batches]

    assert run(go()) == [2]


def test_a_broken_step_fails_its_requests_and_the_worker_goes_on(monkeypatch):
    async def go():
        model = GatedModel(gated=False)
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=8))
        real = batcher._take_batch
        calls = {"n": 0}

        def broken_once():
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected")
            return real()

        monkeypatch.setattr(batcher, "_take_batch", broken_once)
        with pytest.raises(RuntimeError, match="injected"):
            await asyncio.wait_for(batcher.infer(images([1])), 30)
        _, labels = await asyncio.wait_for(batcher.infer(images([2])), 30)
        await batcher.close()
        return labels

    assert run(go()).tolist() == [2]


def test_a_dead_worker_is_replaced_on_the_next_request():
    async def go():
        batcher = DynamicBatcher(GatedModel(gated=False), BatchingSettings(max_batch_size=8))
        await batcher.infer(images([1]))
        batcher._task.cancel()  # the worker dies (as a bug or a stray cancel would kill it)
        await asyncio.gather(batcher._task, return_exceptions=True)
        _, labels = await asyncio.wait_for(batcher.infer(images([3])), 30)
        await batcher.close()
        return labels

    assert run(go()).tolist() == [3]


def test_a_failing_observer_costs_no_answer():
    def observer(timing, waits):
        raise ValueError("metrics broke")

    async def go():
        batcher = DynamicBatcher(GatedModel(gated=False), BatchingSettings(max_batch_size=8), observer)
        results = [await asyncio.wait_for(batcher.infer(images([i])), 30) for i in (4, 5)]
        await batcher.close()
        return [r[1].tolist() for r in results]

    assert run(go()) == [[4], [5]]


def test_small_runs_stay_on_the_event_loop_and_large_ones_go_to_the_thread():
    threads: list[tuple[int, int]] = []

    def model(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        threads.append((len(batch), threading.get_ident()))
        return np.zeros((len(batch), NUM_CLASSES), np.float32), np.zeros(len(batch), np.int64)

    async def go() -> int:
        batcher = DynamicBatcher(model, BatchingSettings(max_batch_size=64), inline_max_images=8)
        await batcher.infer(images([1] * 8))
        await batcher.infer(images([1] * 9))
        await batcher.close()
        return threading.get_ident()

    loop_thread = run(go())
    assert threads[0] == (8, loop_thread)
    assert threads[1][0] == 9 and threads[1][1] != loop_thread


def test_runs_on_every_core_run_on_the_event_loop_and_middle_ones_on_the_thread():
    threads: list[tuple[int, int]] = []

    def model(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        threads.append((len(batch), threading.get_ident()))
        return np.zeros((len(batch), NUM_CLASSES), np.float32), np.arange(len(batch))

    async def go() -> tuple[int, list]:
        batcher = DynamicBatcher(
            model, BatchingSettings(max_batch_size=64), inline_max_images=0, inline_min_images=16
        )
        answers = [await batcher.infer(images([1] * n)) for n in (15, 16, 40)]
        await batcher.close()
        return threading.get_ident(), [a[1].tolist() for a in answers]

    loop_thread, answers = run(go())
    assert [n for n, _ in threads] == [15, 16, 40]
    assert threads[0][1] != loop_thread
    assert threads[1][1] == loop_thread and threads[2][1] == loop_thread
    assert answers == [list(range(n)) for n in (15, 16, 40)]


def test_the_queue_is_bounded_by_images_not_only_requests():
    async def go():
        model = GatedModel()
        settings = BatchingSettings(max_batch_size=64, max_queue=100, max_queue_images=10)
        batcher = DynamicBatcher(model, settings)
        a = asyncio.ensure_future(batcher.infer(images([1] * 8)))
        await wait_started(model)
        with pytest.raises(Overloaded, match="images"):
            await batcher.infer(images([2] * 5))  # 8 + 5 images > 10, though only 2 requests
        small = asyncio.ensure_future(batcher.infer(images([3, 3])))  # 8 + 2 fits
        await asyncio.sleep(0)
        model.release(2)
        await asyncio.gather(a, small)
        await batcher.close()
        return batcher

    assert run(go()).stats.refused_overload == 1
