"""The data plane on its own (no transport): admission, auth, ids, the error table, metrics,
per-item results, against the tiny model."""

import asyncio

import numpy as np
import pytest

from mnist_serving.common.contract import NO_LABEL
from mnist_serving.server.calls import CURRENT_CALL, CallFailed, Status, status_of
from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.dataplane import DataPlane
from mnist_serving.server.errors import (
    DeadlineExpired,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    Unauthenticated,
)
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.models import ModelStore
from tests.helpers import encode
from tests.unit.conftest import digit


def _plane(repository, tokens=()) -> DataPlane:
    metrics = Metrics()
    store = ModelStore(repository, ["CPUExecutionProvider"], BatchingSettings(), metrics)
    return DataPlane(store, metrics, tokens)


async def _loaded(plane: DataPlane) -> DataPlane:
    for model in plane.store.load_initial():
        plane.store.install(model)
    return plane


def _count(plane: DataPlane, method: str, code: str) -> float:
    labels = {"api": "test", "method": method, "code": code}
    return plane.metrics.registry.get_sample_value("mnist_serving_requests_total", labels) or 0.0


def test_the_error_table():
    assert status_of(None) is Status.OK
    assert status_of(InvalidInput("x")) is Status.INVALID_ARGUMENT
    assert status_of(ModelNotFound("x")) is Status.NOT_FOUND
    assert status_of(Unauthenticated("x")) is Status.UNAUTHENTICATED
    assert status_of(Overloaded("x")) is Status.RESOURCE_EXHAUSTED
    assert status_of(NotReady("x")) is Status.UNAVAILABLE
    assert status_of(DeadlineExpired("x")) is Status.DEADLINE_EXCEEDED
    assert status_of(asyncio.CancelledError()) is Status.CANCELLED
    assert status_of(GeneratorExit()) is Status.CANCELLED
    assert status_of(ZeroDivisionError()) is Status.INTERNAL
    assert (Status.NOT_FOUND.http, Status.RESOURCE_EXHAUSTED.http, Status.UNAUTHENTICATED.http) == (
        404,
        429,
        401,
    )


def test_readiness_follows_loading_and_draining(tiny_repository):
    async def go():
        plane = _plane(tiny_repository)
        states = [plane.ready()]
        await _loaded(plane)
        states.append(plane.ready())
        assert await plane.drain(timeout=5, quiet=0)
        states.append(plane.ready())
        await plane.store.close()
        return states

    assert asyncio.run(go()) == [False, True, False]


def test_a_call_is_admitted_classified_and_counted(tiny_repository):
    async def go():
        plane = await _loaded(_plane(tiny_repository))
        call = plane.begin("test", "Classify", "caller-id-1", time_remaining=30)
        assert CURRENT_CALL.get() is call and call.deadline is not None
        plane.admit(call)
        assert plane.inflight == 1
        result = await plane.classify("", "", np.stack([digit(4), digit(9)]))
        outcome = plane.end(call, None)
        await plane.store.close()
        return plane, call, result, outcome

    plane, call, result, outcome = asyncio.run(go())
    assert result.labels.tolist() == [4, 9] and result.model.version == 1
    assert outcome.status is Status.OK and plane.inflight == 0
    assert call.request_id == "caller-id-1"
    assert _count(plane, "Classify", "OK") == 1


def test_request_ids_are_generated_unique_and_sanitised(tiny_repository):
    plane = _plane(tiny_repository)
    generated = {plane.begin("test", "m").request_id for _ in range(100)}
    assert len(generated) == 100
    # At most 128 characters are read; non-printable ones are dropped.
    assert plane.begin("test", "m", "ok\x00\n" + "x" * 500).request_id == "ok" + "x" * 124


def test_draining_refuses_new_calls_unavailable_and_counts_them(tiny_repository):
    async def go():
        plane = await _loaded(_plane(tiny_repository))
        await plane.drain(timeout=5, quiet=0)
        call = plane.begin("test", "Classify")
        with pytest.raises(NotReady) as info:
            plane.admit(call)
        outcome = plane.end(call, info.value)
        await plane.store.close()
        return plane, outcome

    plane, outcome = asyncio.run(go())
    assert outcome.status is Status.UNAVAILABLE and "shutting down" in outcome.message
    assert plane.inflight == 0 and _count(plane, "Classify", "UNAVAILABLE") == 1


def test_a_cancelled_call_is_cancelled_in_metrics(tiny_repository):
    plane = _plane(tiny_repository)
    call = plane.begin("test", "Classify")
    plane.admit(call)
    outcome = plane.end(call, asyncio.CancelledError())
    assert outcome.status is Status.CANCELLED and plane.inflight == 0
    assert _count(plane, "Classify", "CANCELLED") == 1 and _count(plane, "Classify", "OK") == 0


def test_an_unexpected_error_is_internal_with_the_request_id_only(tiny_repository):
    plane = _plane(tiny_repository)
    call = plane.begin("test", "Classify", "rid-7")
    plane.admit(call)
    outcome = plane.end(call, RuntimeError("secret detail"))
    assert outcome.status is Status.INTERNAL
    assert "rid-7" in outcome.message and "secret" not in outcome.message


def test_the_call_construct_runs_every_step_and_answers_failures_as_call_failed(tiny_repository):
    """What each transport relies on: a success is counted; a failure leaves as CallFailed with
    its status, a message safe to show and the request id; a refused token skips the body."""

    async def go():
        plane = await _loaded(_plane(tiny_repository, [b"s3cret"]))
        async with plane.call("test", "Classify", "Bearer s3cret", "rid-1", 30) as call:
            assert CURRENT_CALL.get() is call and plane.inflight == 1
            await plane.classify("", "", np.stack([digit(3)]))
        failures = []
        for authorization, error in (("Bearer s3cret", InvalidInput("bad", "inputs[0].shape")), (None, None)):
            ran = []
            try:
                async with plane.call("test", "Classify", authorization, "rid-2") as call:
                    ran.append(True)
                    raise error
            except CallFailed as failed:
                failures.append((failed.status, failed.message, failed.request_id, ran))
        with pytest.raises(asyncio.CancelledError):  # a caller that went away: no answer to give
            async with plane.call("test", "Classify", "Bearer s3cret"):
                raise asyncio.CancelledError
        await plane.store.close()
        return plane, failures

    plane, failures = asyncio.run(go())
    assert failures[0] == (Status.INVALID_ARGUMENT, "inputs[0].shape: bad", "rid-2", [True])
    assert failures[1][0] is Status.UNAUTHENTICATED and failures[1][2] is None and failures[1][3] == []
    assert _count(plane, "Classify", "OK") == 1 and _count(plane, "Classify", "INVALID_ARGUMENT") == 1
    assert _count(plane, "Classify", "CANCELLED") == 1 and _count(plane, "Classify", "UNAUTHENTICATED") == 1
    assert plane.inflight == 0


def test_per_item_results_keep_good_items_and_name_bad_ones(tiny_repository):
    async def go():
        plane = await _loaded(_plane(tiny_repository))
        items = [digit(2), b"not an image", InvalidInput("images[2].raw: 3 bytes"), digit(5), b""]
        result = await plane.classify_items("", "", items)
        await plane.store.close()
        return result

    result = asyncio.run(go())
    assert result.labels.tolist() == [2, NO_LABEL, NO_LABEL, 5, NO_LABEL]
    assert sorted(result.errors) == [1, 2, 4]
    assert str(result.errors[1]).startswith("images[1].encoded")
    assert str(result.errors[2]).startswith("images[2].raw")
    assert result.confidences.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_unknown_model_is_not_found_and_no_model_is_unavailable(tiny_repository):
    async def go():
        plane = _plane(tiny_repository)
        with pytest.raises(NotReady):
            plane.model("", "")
        await _loaded(plane)
        with pytest.raises(ModelNotFound):
            plane.model("resnet", "")
        with pytest.raises(ModelNotFound):
            plane.model("", "12")
        await plane.store.close()

    asyncio.run(go())


def test_bearer_tokens(tiny_repository):
    open_plane = _plane(tiny_repository)
    assert open_plane.auth_problem(None) is None
    plane = _plane(tiny_repository, tokens=[b"s3cret"])
    assert plane.auth_problem("Bearer s3cret") is None
    assert plane.auth_problem("bearer s3cret ") is None
    assert "missing" in plane.auth_problem(None)
    assert "Bearer <token>" in plane.auth_problem("Basic abc")
    assert plane.auth_problem("Bearer guess") == "invalid bearer token"


def test_a_reload_during_a_call_fails_nothing_the_old_version_answers_then_retires(tiny_repository):
    """A call resolves version 1 and is decoding when version 2 is installed and 1 is retired
    (what a hot reload does): the call is answered by version 1, which stops only afterwards."""
    from tests.unit.conftest import publish_tiny

    async def go():
        plane = await _loaded(_plane(tiny_repository))
        decoding, go_on = asyncio.Event(), asyncio.Event()
        decode = plane.decoder.decode

        async def held_decode(*args, **kwargs):
            decoding.set()
            await go_on.wait()
            return await decode(*args, **kwargs)

        plane.decoder.decode = held_decode
        stroke = np.zeros((28, 28), np.uint8)
        stroke[6:22, 12:16] = 255  # an MNIST-style stroke: decoded as it is
        blob = encode(stroke)
        call = asyncio.ensure_future(plane.classify_items("", "", [blob, blob, digit(2)]))
        await decoding.wait()
        publish_tiny(tiny_repository, "mnist", 2)
        previous = plane.store.install(plane.store.build("mnist", 2))
        retiring = asyncio.ensure_future(previous.retire())
        await asyncio.sleep(0)
        still_open = not retiring.done()
        go_on.set()
        result = await call
        await retiring
        after = await plane.classify("", "", np.stack([digit(1)]))
        await plane.store.close()
        return still_open, result, after

    still_open, result, after = asyncio.run(go())
    assert still_open and result.model.version == 1 and result.errors == {}
    assert result.labels.tolist()[2] == 2 and after.model.version == 2 and after.labels.tolist() == [1]
