"""Settings precedence and device/provider selection."""

from pathlib import Path

import pytest

from mnist_serving.server import workers as workers_module
from mnist_serving.server.config import ServerConfig, load_config
from mnist_serving.server.errors import StartupError
from mnist_serving.server.runner import CPU, CUDA, select_providers
from mnist_serving.server.security import load_tokens


def test_defaults():
    config = load_config([], environ={})
    assert config == ServerConfig().resolved()
    assert config.decode_workers >= 1 and config.inline_max_images >= 0  # automatic: resolved once
    assert (config.port, config.model_repository, config.device) == (50051, Path("models"), "auto")


def test_environment_then_flags():
    env = {
        "MNIST_SERVING_PORT": "6000",
        "MNIST_SERVING_MAX_BATCH_SIZE": "32",
        "MNIST_SERVING_BATCHING": "false",
        "MNIST_SERVING_MODEL_VERSION": "3",
    }
    config = load_config([], environ=env)
    assert (config.port, config.max_batch_size, config.batching, config.model_version) == (6000, 32, False, 3)
    config = load_config(["--port", "7000", "--batching", "true"], environ=env)
    assert (config.port, config.batching, config.max_batch_size) == (7000, True, 32)


def test_every_flag_has_an_environment_variable_in_its_help():
    from mnist_serving.server.config import build_parser

    text = build_parser().format_help()
    for name in ServerConfig.__dataclass_fields__:
        assert f"MNIST_SERVING_{name.upper()}" in text


@pytest.mark.parametrize(
    "argv, env",
    [
        (["--max-batch-size", "0"], {}),
        ([], {"MNIST_SERVING_PORT": "x"}),
        (["--device", "tpu"], {}),
        (["--auth-token", ""], {}),  # an empty token is a mistake, not "tokens off"
        (["--log-level", "INFOO"], {}),
        ([], {"MNIST_SERVING_LOG_LEVEL": "verbose"}),
        ([], {"MNIST_SERVING_DEVICE": "tpu"}),  # choices hold for the environment too
        (["--max-queue-images", "0"], {}),
    ],
)
def test_bad_settings_exit_with_usage_error(argv, env):
    with pytest.raises(SystemExit) as info:
        load_config(argv, environ=env)
    assert info.value.code == 2


def test_the_default_message_limit_covers_the_largest_raw_batch():
    config = ServerConfig()
    assert config.max_message_bytes >= config.max_request_images * 784 + 1024


def test_empty_environment_values_mean_unset_and_levels_are_case_blind():
    config = load_config([], environ={"MNIST_SERVING_AUTH_TOKEN": "", "MNIST_SERVING_LOG_LEVEL": "debug"})
    assert config.auth_token is None and config.log_level == "DEBUG"
    assert load_config(["--log-level", "warning"], environ={}).log_level == "WARNING"


def test_provider_selection():
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]
    assert select_providers("auto", [CPU]) == [CPU]
    assert select_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(StartupError, match="onnxruntime-gpu"):
        select_providers("cuda", [CPU])


def test_operations_doc_explains_every_flag():
    from mnist_serving.server.config import flags_markdown

    doc = (Path(__file__).parents[3] / "docs" / "operations.md").read_text()
    assert flags_markdown() in doc, "regenerate with: python -m mnist_serving.server.config"


def test_client_channels_reconnect_from_100_ms():
    """What docs/reliability.md promises about reconnecting is a channel setting."""
    from mnist_serving.client.client import ClientOptions

    options = dict(ClientOptions().channel_options())
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    assert options["grpc.min_reconnect_backoff_ms"] == 100
    assert options["grpc.max_reconnect_backoff_ms"] <= 2000


@pytest.mark.parametrize(
    ("cores", "workers", "explicit", "expected"),
    [(2, 1, -1, 0), (2, 2, -1, 8), (16, 16, -1, 8), (16, 4, -1, 0), (2, 2, 0, 0), (16, 1, 4, 4)],
)
def test_small_runs_stay_on_the_event_loop_only_without_a_spare_core(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, explicit: int, expected: int
) -> None:
    monkeypatch.setattr("mnist_serving.server.config.available_cpus", lambda: cores)
    config = ServerConfig(workers=workers, inline_max_images=explicit).resolved()
    assert config.inline_max_images == expected


def test_each_worker_keeps_the_settings_derived_from_the_worker_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mnist_serving.server.config.available_cpus", lambda: 8)
    config = ServerConfig(workers=4)
    worker = workers_module.worker_settings(config, port=50051, index=1)
    assert (worker.workers, worker.decode_workers, worker.inline_max_images) == (1, 2, 0)
    assert worker.metrics_port == config.metrics_port + 1


def test_token_file_skips_comments_and_blank_lines_after_stripping(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# header\n   # indented comment\n\n  alpha  \n\tbeta\n")
    config = ServerConfig(auth_token="gamma", auth_token_file=tokens)
    assert load_tokens(config) == [b"gamma", b"alpha", b"beta"]


@pytest.mark.parametrize(
    ("flag", "workers", "expected"),
    [(-1, 1, (1, 8)), (-1, 3, (1, 2)), (0, 1, (0, 0)), (3, 2, (3, 3))],
)
def test_big_runs_get_this_process_share_of_the_cores_only_by_default(monkeypatch, flag, workers, expected):
    monkeypatch.setattr("mnist_serving.server.config.available_cpus", lambda: 8)
    assert ServerConfig(intra_op_threads=flag, workers=workers).run_threads == expected


def test_load_model_repeats_and_reads_a_comma_separated_variable():
    explicit = ["--model-control-mode", "explicit"]
    assert load_config(explicit + ["--load-model", "a", "--load-model", "b"], {}).load_model == ("a", "b")
    assert load_config(explicit, {"MNIST_SERVING_LOAD_MODEL": "a, b"}).load_model == ("a", "b")
    flags_win = load_config(explicit + ["--load-model", "c"], {"MNIST_SERVING_LOAD_MODEL": "a,b"})
    assert flags_win.load_model == ("c",)
    assert load_config([], {}).load_model == ()


@pytest.mark.parametrize(
    "argv",
    [
        ["--model-control-mode", "explicit", "--workers", "2"],
        ["--load-model", "mnist"],  # poll mode loads every model
        ["--model-control-mode", "manual"],
    ],
)
def test_model_control_flags_that_cannot_work_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        load_config(argv, {})
    assert info.value.code == 2
