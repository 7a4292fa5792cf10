"""Which model versions are loaded, and finding one for a request.

A request's model name and version are matched against what is loaded (a dict lookup),
never joined into a filesystem path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mnist_serving import model_repository
from mnist_serving.contract import INPUT, MODEL_FILENAME, MODEL_NAME, OUTPUTS
from mnist_serving.server.batcher import DynamicBatcher
from mnist_serving.server.errors import ModelNotFound, NotReady, StartupError
from mnist_serving.server.runner import OnnxRunner

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: int
    runner: OnnxRunner
    batcher: DynamicBatcher
    sidecar: dict

    @property
    def version_str(self) -> str:
        return str(self.version)

    def warm_up(self) -> None:
        """Run each batch-size class once so the first real request is not slow."""
        sizes = sorted({1, 8, min(64, self.batcher.max_batch_size), self.batcher.max_batch_size})
        for size in sizes:
            probabilities, labels = self.runner.run(np.zeros((size, 28, 28), dtype=np.uint8))
            if probabilities.shape != (size, 10) or labels.shape != (size,):
                raise StartupError(f"{self.name} v{self.version}: warm-up outputs have wrong shapes")
            if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
                raise StartupError(f"{self.name} v{self.version}: probabilities do not sum to 1")


def describe_tensors() -> tuple[list[dict], list[dict]]:
    return [INPUT.as_dict()], [spec.as_dict() for spec in OUTPUTS]


class ModelStore:
    """Models loaded from a Triton-style repository (each model's newest or pinned version)."""

    def __init__(
        self,
        repository: Path,
        providers: list[str],
        batcher_options: dict,
        intra_op_threads: int = 0,
        pinned_version: int | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.providers = providers
        self.batcher_options = batcher_options
        self.intra_op_threads = intra_op_threads
        self.pinned_version = pinned_version
        self.models: dict[str, dict[int, LoadedModel]] = {}
        self.default: dict[str, int] = {}

    def load_all(self) -> None:
        """Load the default model (required) and any other model found, e.g. the int8 variant."""
        if not self.repository.is_dir():
            raise StartupError(
                f"--model-repository {self.repository}: no such directory; "
                "run mnist-train and mnist-export first (or `make run`)"
            )
        names = sorted(
            p.name
            for p in self.repository.iterdir()
            if p.is_dir() and model_repository.list_versions(self.repository, p.name)
        )
        if MODEL_NAME not in names:
            raise StartupError(
                f"--model-repository {self.repository}: no published '{MODEL_NAME}' "
                f"model (expected {self.repository}/{MODEL_NAME}/<version>/{MODEL_FILENAME})"
            )
        for name in names:
            versions = model_repository.list_versions(self.repository, name)
            if self.pinned_version is not None and name == MODEL_NAME:
                if self.pinned_version not in versions:
                    raise StartupError(
                        f"--model-version {self.pinned_version}: {name} has versions {versions}"
                    )
                version = self.pinned_version
            else:
                version = versions[-1]
            try:
                self._load(name, version)
            except StartupError:
                if name == MODEL_NAME:
                    raise
                log.exception("skipping model %s version %d", name, version)

    def _load(self, name: str, version: int) -> LoadedModel:
        directory = model_repository.version_dir(self.repository, name, version)
        path = directory / MODEL_FILENAME
        if not path.is_file():
            raise StartupError(f"{path}: missing")
        try:
            sidecar = model_repository.read_sidecar(directory)
        except (OSError, ValueError) as exc:
            raise StartupError(f"{directory}: unreadable sidecar ({exc})") from None
        runner = OnnxRunner(path, self.providers, self.intra_op_threads)
        batcher = DynamicBatcher(runner.run, **self.batcher_options)
        model = LoadedModel(name, version, runner, batcher, sidecar)
        model.warm_up()
        self.models.setdefault(name, {})[version] = model
        self.default[name] = version
        log.info("loaded model %s version %d from %s (provider %s)", name, version, path, runner.provider)
        return model

    def start(self) -> None:
        for versions in self.models.values():
            for model in versions.values():
                model.batcher.start()

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The loaded model for a request's name and version ('' = the served default)."""
        name = name or MODEL_NAME
        if not self.models:
            raise NotReady("model is loading; retry shortly")
        versions = self.models.get(name)
        if versions is None:
            raise ModelNotFound(f"model_name: '{name[:100]}' is not served; available: {sorted(self.models)}")
        if not version:
            return versions[self.default[name]]
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFound(
                f"model_version: '{version[:40]}' of '{name}' is not loaded; "
                f"loaded: {sorted(str(v) for v in versions)}"
            )
        return versions[int(version)]

    def all(self) -> list[LoadedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    async def close(self) -> None:
        for model in self.all():
            await model.batcher.close()
