"""ModelStore against the tiny model: loading, lookup, refusals, and the metrics it records."""

import asyncio
import threading

import numpy as np
import pytest

from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.errors import ModelNotFound, StartupError
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.models import ModelStore
from tests.unit.conftest import digit, publish_tiny


def store_for(repository, metrics=None) -> ModelStore:
    return ModelStore(
        repository, ["CPUExecutionProvider"], BatchingSettings(max_batch_size=8), metrics or Metrics()
    )


def test_loads_serves_and_counts(tiny_repository):
    metrics = Metrics()
    store = store_for(tiny_repository, metrics)

    async def go():
        for model in store.load_initial():
            store.install(model)
        model = store.get("mnist")
        result = await model.batcher.infer(np.stack([digit(3), digit(7)]))
        await store.close()
        return result

    probabilities, labels = asyncio.run(go())
    assert labels.tolist() == [3, 7] and probabilities[0, 3] == 1
    assert store.ready() and store.versions("mnist") == [1]
    loaded = {"model": "mnist", "version": "1", "result": "ok"}
    assert metrics.registry.get_sample_value("mnist_serving_model_loads_total", loaded) == 1
    labels = {"model": "mnist", "version": "1"}  # read from the batcher's statistics record
    assert metrics.registry.get_sample_value("mnist_serving_images_classified_total", labels) == 2


def test_unknown_names_and_versions_are_not_found(tiny_repository):
    store = store_for(tiny_repository)

    async def go():
        for model in store.load_initial():
            store.install(model)
        for name, version in (("resnet", ""), ("mnist", "2"), ("../mnist", "")):
            with pytest.raises(ModelNotFound):
                store.get(name, version)
        for version in ("../1", "01", "²", "١", "1" * 5000):  # not version numbers at all
            with pytest.raises(ModelNotFound, match="not a version number"):
                store.get("mnist", version)
        assert store.get("mnist", "1") is store.get("mnist")
        await store.close()

    asyncio.run(go())


def test_a_model_breaking_the_contract_or_its_digest_is_refused(tmp_path):
    publish_tiny(tmp_path, "mnist", 1, model=b"\x08\x07 not onnx")
    with pytest.raises(StartupError):
        store_for(tmp_path).load_initial()
    other = tmp_path / "other"
    directory = publish_tiny(other, "mnist", 1)
    (directory / "model.onnx").write_bytes((directory / "model.onnx").read_bytes() + b"\x00")
    with pytest.raises(StartupError, match="SHA-256"):
        store_for(other).load_initial()


def test_an_empty_repository_is_a_configuration_error(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(StartupError, match="no published 'mnist' model"):
        store_for(tmp_path).check_repository()


def _refused(store, name="mnist", version=1) -> bool:
    return store.try_build(name, version) is None


def test_any_failure_while_building_refuses_the_version_and_counts_it(tiny_repository, monkeypatch):
    from mnist_serving.server import models

    metrics = Metrics()
    store = store_for(tiny_repository, metrics)

    def broken_warm_up(self):
        raise ValueError("warm-up blew up")  # not a StartupError

    monkeypatch.setattr(models.LoadedModel, "warm_up", broken_warm_up)
    assert _refused(store)
    failed = {"model": "mnist", "version": "1", "result": "failed"}
    assert metrics.registry.get_sample_value("mnist_serving_model_loads_total", failed) == 1
    assert store.pending() == []  # refused until its files change
    with pytest.raises(StartupError, match="warm-up blew up"):  # at start-up: a clean exit 2
        store.load_initial()


def test_a_sidecar_without_a_digest_is_refused(tiny_repository):
    import json

    sidecar = tiny_repository / "mnist" / "1" / "model.json"
    data = json.loads(sidecar.read_text())
    del data["model_sha256"]
    sidecar.write_text(json.dumps(data))
    with pytest.raises(StartupError, match="model_sha256"):
        store_for(tiny_repository).build("mnist", 1)


def test_a_symlink_out_of_the_repository_is_refused(tiny_repository, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "model.onnx"
    model = tiny_repository / "mnist" / "1" / "model.onnx"
    outside.write_bytes(model.read_bytes())
    model.unlink()
    model.symlink_to(outside)
    with pytest.raises(StartupError, match="outside the model repository"):
        store_for(tiny_repository).build("mnist", 1)


def test_external_data_initialisers_are_refused(tmp_path):
    """A model that points at files beside it is loaded from its verified bytes: nothing resolves."""
    import onnx
    import onnx.external_data_helper

    from tests.unit.conftest import tiny_model_bytes

    model = onnx.load_from_string(tiny_model_bytes())
    work = tmp_path / "work"
    work.mkdir()
    onnx.save_model(
        model, work / "model.onnx", save_as_external_data=True, size_threshold=0, location="w.bin"
    )
    repository = tmp_path / "repo"
    directory = publish_tiny(repository, "mnist", 1, model=(work / "model.onnx").read_bytes())
    (directory / "w.bin").write_bytes((work / "w.bin").read_bytes())  # even with the data beside it
    with pytest.raises(StartupError, match="cannot load model"):
        store_for(repository).build("mnist", 1)


def test_a_version_that_takes_too_long_to_build_is_refused_and_the_old_one_serves(
    tiny_repository, monkeypatch
):
    from mnist_serving.server.app import MnistServer
    from mnist_serving.server.config import ServerConfig

    release = threading.Event()

    async def go():
        config = ServerConfig(
            model_repository=tiny_repository,
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            model_load_timeout=0.5,
        )
        server = MnistServer(config)
        await server.start_transport()
        await server.load_models()
        publish_tiny(tiny_repository, "mnist", 2)
        build = server.store.build

        def stuck(name, version):
            if version == 2:
                release.wait(30)  # a build that hangs (a wedged disk, a stuck provider)
            return build(name, version)

        monkeypatch.setattr(server.store, "build", stuck)
        await server.poll_once()
        serving = server.store.get("mnist").version
        pending = server.store.pending()
        failed = server.metrics.registry.get_sample_value(
            "mnist_serving_model_loads_total", {"model": "mnist", "version": "2", "result": "failed"}
        )
        release.set()
        await server.stop()
        return serving, pending, failed

    serving, pending, failed = asyncio.run(go())
    assert serving == 1 and pending == [] and failed == 1  # refused, counted, not retried


def test_a_version_that_lands_on_another_provider_is_refused(tiny_repository):
    """A reload is refused like any failed build when its session runs elsewhere than the
    version being served (a GPU server whose new session fell back to the CPU)."""
    store = store_for(tiny_repository)
    store.provider = "CUDAExecutionProvider"  # what the served version runs on
    assert store.try_build("mnist", 1) is None
    assert (
        "runs on CPUExecutionProvider, but this server serves on CUDAExecutionProvider"
        in store.reasons["mnist"]
    )


@pytest.mark.parametrize(("inline_big_runs", "expected"), [(True, 64), (False, None)])
def test_runs_on_the_every_core_session_go_to_the_event_loop_unless_turned_off(
    tiny_repository, inline_big_runs, expected
):
    store = ModelStore(
        tiny_repository,
        ["CPUExecutionProvider"],
        BatchingSettings(max_batch_size=256),
        Metrics(),
        run_threads=(1, 2),
        inline_big_runs=inline_big_runs,
    )
    model = store.build("mnist", 1)
    assert model.batcher._inline_min_images == expected
    asyncio.run(model.batcher.close())
