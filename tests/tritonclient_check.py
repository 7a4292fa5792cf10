"""Run by the tests in its own process: Triton's own client against our server.

tritonclient registers its own `inference.*` protobuf symbols, which would clash with the
server's in one process, so it is exercised here, as a third-party caller really would.
Usage: python tritonclient_check.py ADDRESS IMAGES.npy OUT.npz
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton


def main() -> None:
    address, images_path, out_path = sys.argv[1:4]
    images = np.load(images_path)
    client = triton.InferenceServerClient(address)
    meta = client.get_model_metadata("mnist", as_json=True)
    facts = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist"),
        "unknown_ready": client.is_model_ready("nope"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": meta,
    }
    labels, probabilities = [], []
    for start in range(0, len(images), 500):
        batch = images[start : start + 500]
        tensor = triton.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        result = client.infer(
            "mnist",
            [tensor],
            outputs=[triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")],
        )
        labels.append(result.as_numpy("label"))
        probabilities.append(result.as_numpy("probabilities"))
    floats = (images[:64].astype(np.float32) / 255.0).reshape(64, 784)
    tensor = triton.InferInput("image", [64, 784], "FP32")
    tensor.set_data_from_numpy(floats)
    fp32_labels = client.infer("mnist", [tensor]).as_numpy("label")
    try:
        bad = triton.InferInput("image", [1, 27, 28], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 27, 28), np.uint8))
        client.infer("mnist", [bad])
        facts["bad_input"] = "accepted"
    except triton.InferenceServerException as exc:
        facts["bad_input"] = {"status": exc.status(), "message": exc.message()}
    np.savez(
        out_path,
        labels=np.concatenate(labels),
        probabilities=np.concatenate(probabilities),
        fp32_labels=fp32_labels,
    )
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
