"""Where a job's images are classified: the server, or the published model in process.

``LocalBackend`` (``mnist-classify --model-repository DIR``) needs onnxruntime, which the
``[offline]`` extra brings to a client install; it checks the published version's sidecar
with the server's own check (``model_repository.check_sidecar``) and gives the same rows
(tested against the server on the same inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_serving.client.client import Client
from mnist_serving.client.results import BatchResult
from mnist_serving.common import model_repository
from mnist_serving.common.contract import (
    IMAGE_SHAPE,
    INPUT,
    MODEL_FILENAME,
    MODEL_NAME,
    NUM_CLASSES,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
)


class ModelUnavailable(RuntimeError):
    """The in-process model cannot run: none published, a refused sidecar, no onnxruntime.

    A usage problem (the CLI exits 2), not a server or transport error.
    """


class ServerBackend:
    """The server's ClassifyBatch, one request per chunk (retries as the Client does)."""

    def __init__(self, client: Client, probabilities: bool, model: str = "", version: str = "") -> None:
        self.client, self.probabilities, self.model, self.version = client, probabilities, model, version

    def _call(self, images: object, count: int) -> BatchResult:
        return self.client.classify_batch(
            images, max(1, count), 1, self.probabilities, self.model, self.version
        )

    def classify_raw(self, images: np.ndarray) -> BatchResult:
        return self._call(images, len(images))

    def classify_encoded(self, blobs: list[bytes]) -> BatchResult:
        from mnist_serving.protos.gen.mnist.v1 import classifier_pb2 as pb

        return self._call([pb.Image(encoded=b) for b in blobs], len(blobs))


class LocalBackend:
    """The newest (or given) published version of a model, run by onnxruntime in process."""

    def __init__(self, repository: Path, probabilities: bool, model: str = "", version: str = "") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelUnavailable(
                "--model-repository runs the model in process and needs onnxruntime: "
                "pip install 'mnist-serving[offline]'"
            ) from None
        name = model or MODEL_NAME
        if version:
            directory = model_repository.version_dir(repository, name, int(version))
        else:
            newest = model_repository.published_model(repository, name)
            if newest is None:
                raise ModelUnavailable(f"{repository}: no published '{name}' model")
            directory = Path(newest).parent
        data = (directory / MODEL_FILENAME).read_bytes()
        sidecar = model_repository.read_sidecar(directory)
        try:
            model_repository.check_sidecar(directory, sidecar, data)
        except (model_repository.VersionRefused, OSError) as exc:
            raise ModelUnavailable(f"{exc}; refusing it") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.name, self.version = name, directory.name
        self.probabilities = probabilities

    def classify_raw(self, images: np.ndarray) -> BatchResult:
        probs, labels = self.session.run(
            [OUTPUT_PROBABILITIES.name, OUTPUT_LABEL.name], {INPUT.name: np.ascontiguousarray(images)}
        )
        confidences = probs[np.arange(len(labels)), labels]
        return BatchResult(
            labels, confidences, probs if self.probabilities else None, self.name, self.version
        )

    def classify_encoded(self, blobs: list[bytes]) -> BatchResult:
        """What the server does with encoded images: the same pipeline, per-item errors."""
        from mnist_serving.common import preprocess  # OpenCV and Pillow only where images are decoded

        images, rows, errors = [], [], {}
        for i, blob in enumerate(blobs):
            try:
                images.append(preprocess.decode(blob)[0])
                rows.append(i)
            except preprocess.ImageError as exc:
                errors[i] = f"{exc.code}: {exc.item_message(f'images[{i}].encoded')}"
        labels = np.full(len(blobs), -1, np.int64)
        confidences = np.zeros(len(blobs), np.float32)
        probs = np.zeros((len(blobs), NUM_CLASSES), np.float32)
        if rows:
            part = self.classify_raw(np.stack(images) if images else np.zeros((0, *IMAGE_SHAPE), np.uint8))
            labels[rows], confidences[rows] = part.labels, part.confidences
            if part.probabilities is not None:
                probs[rows] = part.probabilities
        return BatchResult(
            labels, confidences, probs if self.probabilities else None, self.name, self.version, errors
        )
