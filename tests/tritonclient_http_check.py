"""Run by the tests in its own process: Triton's own HTTP client against our REST port.

Usage: python tritonclient_http_check.py HOST:PORT IMAGES.npy OUT.npz
Binary tensors (the client's default) and JSON tensors both ways, every model served.
"""

import json
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def infer(client: triton.InferenceServerClient, model: str, images: np.ndarray, binary: bool) -> tuple:
    tensor = triton.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer(model, [tensor], outputs=outputs, request_id="triton-http-1")
    return result.as_numpy("probabilities"), result.as_numpy("label"), result.get_response()


def main() -> None:
    address, images_path, out_path = sys.argv[1:4]
    images = np.load(images_path)
    client = triton.InferenceServerClient(address)
    facts = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist"),
        "int8_ready": client.is_model_ready("mnist-int8"),
        "unknown_ready": client.is_model_ready("nope"),
        "server": client.get_server_metadata(),
        "metadata": client.get_model_metadata("mnist"),
        "int8_metadata": client.get_model_metadata("mnist-int8", model_version="1"),
    }
    binary = infer(client, "mnist", images, binary=True)
    text = infer(client, "mnist", images[:32], binary=False)
    int8 = infer(client, "mnist-int8", images[:32], binary=True)
    facts["binary_response"] = {k: v for k, v in binary[2].items() if k != "outputs"}
    facts["json_outputs"] = [{k: v for k, v in o.items() if k != "data"} for o in text[2]["outputs"]]
    try:
        bad = triton.InferInput("image", [1, 27, 28], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 27, 28), np.uint8))
        client.infer("mnist", [bad])
        facts["bad_shape"] = None
    except InferenceServerException as exc:
        facts["bad_shape"] = {"status": exc.status(), "message": exc.message()}
    np.savez(
        out_path,
        probabilities=binary[0],
        labels=binary[1],
        json_probabilities=text[0],
        json_labels=text[1],
        int8_labels=int8[1],
    )
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
