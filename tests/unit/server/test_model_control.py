"""ModelControl against the tiny model: the three modes, a load that fails, an unload that
waits for the calls it took, and the statistics record those calls fill in."""

import asyncio

import numpy as np
import pytest

from mnist_serving.server.batch_stats import RequestTimes
from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.errors import FailedPrecondition, InvalidInput, ModelNotFound
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.model_control import ModelControl
from mnist_serving.server.models import ModelStore
from mnist_serving.server.triton_documents import model_statistics, repository_index, to_json
from tests.unit.conftest import digit, publish_tiny


def control_for(repository, mode: str, requested=()) -> tuple[ModelStore, ModelControl, list]:
    store = ModelStore(
        repository,
        ["CPUExecutionProvider"],
        BatchingSettings(max_batch_size=8, max_delay_s=0.05),
        Metrics(),
        mode=mode,
        requested=requested,
    )
    changes = []

    async def changed() -> None:
        changes.append(store.ready())

    return store, ModelControl(store, 30.0, 0.01, changed), changes


@pytest.mark.parametrize("mode", ["poll", "none"])
def test_only_explicit_mode_loads_and_unloads(tiny_repository, mode):
    store, control, _ = control_for(tiny_repository, mode)

    async def go():
        for name, call in (("load", control.load("mnist")), ("unload", control.unload("mnist"))):
            with pytest.raises(
                FailedPrecondition, match=f"cannot {name} models in --model-control-mode {mode}"
            ):
                await call
        control.start_polling()
        polling = control._watcher is not None
        await control.close()
        return polling

    assert asyncio.run(go()) is (mode == "poll")  # none: what loaded at start never changes


def test_explicit_load_serve_unload_waits_for_the_calls_it_took(tiny_repository):
    store, control, changes = control_for(tiny_repository, "explicit")

    async def go():
        assert store.wanted() == {} and not store.ready()
        await control.load("mnist")
        model = store.get("mnist").lease()
        times = RequestTimes()
        answer = asyncio.ensure_future(model.batcher.infer(np.stack([digit(4)]), None, times))
        await asyncio.sleep(0)  # queued: the batcher waits its 50 ms for more
        unloading = asyncio.ensure_future(control.unload("mnist"))
        await asyncio.sleep(0)
        with pytest.raises(ModelNotFound, match="not loaded .unloaded through the repository API"):
            store.get("mnist")  # new calls no longer find it at once
        assert not unloading.done()  # the call it took is not answered yet
        _, labels = await answer
        model.release()
        await unloading
        return labels, times, model

    labels, times, model = asyncio.run(go())
    assert labels.tolist() == [4]  # answered, not failed, though the unload came first
    assert changes == [True, False] and not store.ready()
    assert times.queue > 0 and times.infer > 0 and times.inferred_at is not None
    index = to_json(repository_index(store))["models"]
    assert index == [
        {
            "name": "mnist",
            "version": "",
            "state": "UNAVAILABLE",
            "reason": "unloaded through the repository API",
        }
    ]
    statistics = to_json(model_statistics(model))
    assert statistics["execution_count"] == 1 and statistics["inference_count"] == 1
    assert statistics["batch_stats"][0]["batch_size"] == 1
    assert statistics["batch_stats"][0]["compute_infer"]["count"] == 1


def test_a_failed_load_keeps_what_is_served(tiny_repository):
    publish_tiny(tiny_repository, "other", 1)
    (tiny_repository / "other" / "1" / "model.onnx").write_bytes(b"not a model")
    store, control, _ = control_for(tiny_repository, "explicit", requested=("mnist",))

    async def go():
        for model in store.load_initial():
            store.install(model)
        with pytest.raises(FailedPrecondition, match="failed to load 'other'"):
            await control.load("other")
        with pytest.raises(ModelNotFound, match="not in the model repository"):
            await control.load("../mnist")
        with pytest.raises(InvalidInput, match="parameters"):
            await control.load("mnist", {"config": "{}"})
        serving = store.get("mnist").version
        await store.close()
        return serving

    assert asyncio.run(go()) == 1
    assert store.requested == {"mnist"} and "other" not in store.models
