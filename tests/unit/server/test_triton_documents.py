"""Triton's documents: HTTP JSON as Triton writes it, the per-request timeout parameter, and the
model configuration built from the contract and the settings."""

import pytest

from mnist_serving.protos.gen.inference import grpc_service_pb2 as v2
from mnist_serving.server.codec import timeout_parameter
from mnist_serving.server.errors import InvalidInput
from mnist_serving.server.triton_documents import to_json


def test_json_writes_64_bit_integers_as_numbers_and_leaves_unset_messages_out():
    statistics = v2.ModelStatistics(name="mnist", version="1", inference_count=2**40, execution_count=3)
    statistics.inference_stats.success.count = 3
    document = to_json(v2.ModelStatisticsResponse(model_stats=[statistics]))
    model = document["model_stats"][0]
    assert model["inference_count"] == 2**40 and model["execution_count"] == 3
    assert model["inference_stats"]["success"] == {"count": 3, "ns": 0}
    assert model["batch_stats"] == [] and model["last_inference"] == 0
    parameter = to_json(v2.InferParameter(int64_param=5))
    assert parameter == {"int64_param": 5}  # a oneof shows only the member that is set


@pytest.mark.parametrize(
    ("parameter", "seconds"),
    [
        (v2.InferParameter(int64_param=250_000), 0.25),
        (v2.InferParameter(uint64_param=1), 1e-6),
        (v2.InferParameter(int64_param=0), None),
    ],
)
def test_the_timeout_parameter_is_microseconds(parameter, seconds):
    assert timeout_parameter({"timeout": parameter}) == seconds
    assert timeout_parameter({}) is None


@pytest.mark.parametrize(
    "parameter",
    [
        v2.InferParameter(string_param="5s"),
        v2.InferParameter(int64_param=-1),
        v2.InferParameter(int64_param=10**15),
    ],
)
def test_a_timeout_that_is_not_a_count_of_microseconds_is_refused(parameter):
    with pytest.raises(InvalidInput, match="parameters.timeout"):
        timeout_parameter({"timeout": parameter})
