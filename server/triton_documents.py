"""Triton's documents, built from what is served: a model's configuration, its statistics and
the repository index, as protobuf messages (gRPC) and as Triton's HTTP JSON.

Nothing here is written by hand per model: the configuration comes from the model contract,
the loaded version and the server's settings; the statistics from the version's own record.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mnist_serving.common.contract import INPUT, MODEL_FILENAME, MODEL_NAME, OUTPUTS, TensorSpec
from mnist_serving.common.preprocess_contract import PREPROCESSING_VERSION
from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.protos.gen.inference import model_config_pb2 as mc
from mnist_serving.server.batch_stats import Duration
from mnist_serving.server.models import LoadedModel, ModelStore
from mnist_serving.server.runner import CUDA

PLATFORM = "onnxruntime_onnx"
# Triton's extension names, as ServerMetadata lists them (docs/operations.md says what each is).
EXTENSIONS = ("model_repository", "model_configuration", "statistics")
SHARED_MEMORY = (
    "shared memory is not offered: send tensors in raw_input_contents "
    "(one packed bytes field per input; 65,536 images are 49 MiB)"
)


def _tensor(spec: TensorSpec, kind: type[mc.ModelInput] | type[mc.ModelOutput]) -> Any:
    """Dims without the batch axis, as Triton writes them; a per-image scalar is [1] reshaped to []."""
    dims = list(spec.shape[1:])
    data_type = mc.DataType.Value(f"TYPE_{spec.v2_datatype}")
    if dims:
        return kind(name=spec.name, data_type=data_type, dims=dims)
    return kind(name=spec.name, data_type=data_type, dims=[1], reshape=mc.ModelTensorReshape(shape=[]))


def model_config(model: LoadedModel, store: ModelStore, max_request_images: int) -> mc.ModelConfig:
    """The version's configuration in Triton's terms (``max_batch_size`` is the most images
    one request may carry; the preferred batch is one onnxruntime run)."""
    batching = store.batching
    if model.name == MODEL_NAME and store.pinned_version is not None:
        policy = mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[model.version]))
    else:
        policy = mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))
    gpu = model.runner.provider == CUDA
    small, big = model.runner.threads
    config = mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="onnxruntime",
        version_policy=policy,
        max_batch_size=max_request_images,
        input=[_tensor(INPUT, mc.ModelInput)],
        output=[_tensor(spec, mc.ModelOutput) for spec in OUTPUTS],
        instance_group=[
            mc.ModelInstanceGroup(
                name=f"{model.name}_0",
                kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
                count=1,
                gpus=[0] if gpu else [],
            )
        ],
        default_model_filename=MODEL_FILENAME,
        parameters={
            "preprocessing_version": mc.ModelParameter(string_value=PREPROCESSING_VERSION),
            "execution_provider": mc.ModelParameter(string_value=model.runner.provider),
            "intra_op_thread_count": mc.ModelParameter(string_value=str(small)),
            "intra_op_thread_count_big_runs": mc.ModelParameter(string_value=str(big)),
        },
    )
    if batching.enabled:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=[batching.max_batch_size],
                max_queue_delay_microseconds=round(batching.max_delay_s * 1e6),
                default_queue_policy=mc.ModelQueuePolicy(
                    timeout_action=mc.ModelQueuePolicy.REJECT,
                    allow_timeout_override=True,
                    max_queue_size=batching.max_queue,
                ),
            )
        )
    return config


def _duration(duration: Duration) -> v2.StatisticDuration:
    return v2.StatisticDuration(count=duration.count, ns=round(duration.seconds * 1e9))


def model_statistics(model: LoadedModel) -> v2.ModelStatistics:
    """The version's statistics since it was loaded (per process)."""
    stats = model.batcher.stats
    return v2.ModelStatistics(
        name=model.name,
        version=model.version_str,
        last_inference=stats.last_run_ns // 1_000_000,
        inference_count=stats.images,
        execution_count=stats.runs,
        inference_stats=v2.InferStatistics(
            **{name: _duration(duration) for name, duration in stats.counted().items()}
        ),
        batch_stats=[
            v2.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(entry.compute_input),
                compute_infer=_duration(entry.compute_infer),
                compute_output=_duration(entry.compute_output),
            )
            for size, entry in sorted(stats.runs_by_size.items())
        ],
    )


def repository_index(store: ModelStore, ready_only: bool = False) -> v2.RepositoryIndexResponse:
    """Every model of the repository: READY with its version, or UNAVAILABLE with the reason."""
    models = []
    for name in sorted(set(store.names()) | set(store.models)):
        versions = store.versions(name)
        if versions:
            models.extend(
                v2.RepositoryIndexResponse.ModelIndex(name=name, version=str(v), state="READY")
                for v in versions
            )
        elif not ready_only:
            reason = store.reasons.get(name, "not loaded")
            models.append(
                v2.RepositoryIndexResponse.ModelIndex(name=name, state="UNAVAILABLE", reason=reason)
            )
    return v2.RepositoryIndexResponse(models=models)


def to_json(message: Message) -> dict[str, Any]:
    """A message as Triton's HTTP API writes it: proto field names, 64-bit integers as numbers
    (protobuf's own JSON writes them as strings), enums by name, every scalar field present."""
    document: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            document[field.name] = {key: _value(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            document[field.name] = [_value(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            continue  # an unset message or oneof member, as protobuf's own JSON leaves it out
        else:
            document[field.name] = _value(field, value)
    return document


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value
