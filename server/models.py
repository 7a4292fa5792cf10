"""Which model versions are loaded, and how new versions are brought in.

A request's model name and version are matched against what is loaded (a dict lookup),
never joined into a filesystem path. New versions are built off the event loop (load,
warm-up, self-check) and installed on it in one step, so a request sees either the old
version or the new one, and requests already queued finish on the version that took them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_serving.common import __version__, model_repository
from mnist_serving.common.contract import (
    IMAGE_SHAPE,
    MODEL_FILENAME,
    MODEL_NAME,
    NUM_CLASSES,
    SIDECAR_FILENAME,
)
from mnist_serving.server.batcher import DynamicBatcher
from mnist_serving.server.config import BatchingSettings
from mnist_serving.server.errors import ModelNotFound, StartupError
from mnist_serving.server.metrics import Metrics
from mnist_serving.server.runner import CPU, OnnxRunner

log = logging.getLogger(__name__)

VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclass
class LoadedModel:
    name: str
    version: int
    runner: OnnxRunner
    batcher: DynamicBatcher
    users: int = 0  # calls that resolved this version and are not answered yet
    _released: asyncio.Future | None = None

    @property
    def version_str(self) -> str:
        return str(self.version)

    def lease(self) -> LoadedModel:
        """Taken by a call from resolving the version to its last answer (``release`` after): a
        reload that replaces this version meanwhile retires it only after (``retire``), so no
        call fails for it."""
        self.users += 1
        return self

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self._released is not None and not self._released.done():
            self._released.set_result(None)

    async def retire(self) -> None:
        """Once no call holds it: finish what its batcher was given, then stop it."""
        if self.users:
            self._released = asyncio.get_running_loop().create_future()
            await self._released
        await self.batcher.close()

    def warm_up(self) -> None:
        """Run each batch-size class once so the first real request is not slow."""
        sizes = sorted({1, 8, min(64, self.batcher.max_batch_size), self.batcher.max_batch_size})
        for size in sizes:
            self.runner.run(np.zeros((size, *IMAGE_SHAPE), dtype=np.uint8))

    def self_check(self) -> None:
        """Outputs on a handful of known inputs must be well-formed probabilities and labels."""
        rng = np.random.default_rng(0)
        probes = np.concatenate(
            [
                np.zeros((1, *IMAGE_SHAPE), np.uint8),
                np.full((1, *IMAGE_SHAPE), 255, np.uint8),
                rng.integers(0, 256, (6, *IMAGE_SHAPE), dtype=np.uint8),
            ]
        )
        probabilities, labels = self.runner.run(probes)
        where = f"{self.name} v{self.version}: self-check"
        if probabilities.shape != (len(probes), NUM_CLASSES) or labels.shape != (len(probes),):
            raise StartupError(f"{where}: output shapes {probabilities.shape}, {labels.shape}")
        if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(1), 1, atol=1e-3):
            raise StartupError(f"{where}: probabilities are not finite or do not sum to 1")
        if not np.array_equal(labels, probabilities.argmax(1)):
            raise StartupError(f"{where}: labels are not the argmax of the probabilities")


class ModelStore:
    """Models from a Triton-style repository: each model's newest (or pinned) version.

    ``mode`` is Triton's model-control mode: ``poll`` and ``none`` serve every model of the
    repository ('mnist' required); ``explicit`` serves the models in ``requested`` (the
    ``--load-model`` ones, then whatever the repository API loads) and is ready with any one.
    """

    def __init__(
        self,
        repository: Path,
        providers: list[str],
        batching: BatchingSettings,
        metrics: Metrics,
        run_threads: tuple[int, int] = (0, 0),
        pinned_version: int | None = None,
        inline_max_images: int = 0,
        inline_big_runs: bool = False,
        mode: str = "poll",
        requested: tuple[str, ...] = (),
        device: str = "auto",
    ) -> None:
        self.repository = Path(repository)
        self.mode = mode
        self.requested: set[str] = set(requested)
        self.reasons: dict[str, str] = {}  # why a model of the repository is not served
        self.device = device
        self.provider: str | None = None  # where the first model served runs; every other must too
        self.inline_max_images = inline_max_images
        self.inline_big_runs = inline_big_runs
        self.providers = providers
        self.batching = batching
        self.metrics = metrics
        self.run_threads = run_threads
        self.pinned_version = pinned_version
        self.models: dict[str, dict[int, LoadedModel]] = {}
        metrics.watch_batchers(lambda: [(m.name, m.version_str, m.batcher.stats) for m in self.all()])
        self.default: dict[str, int] = {}
        self._refused: dict[tuple[str, int], tuple] = {}

    # --- building (runs in a worker thread) ---------------------------------------------

    def _signature(self, name: str, version: int) -> tuple:
        directory = model_repository.version_dir(self.repository, name, version)
        try:
            return tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(directory.iterdir())
            )
        except OSError:
            return ()

    def build(self, name: str, version: int) -> LoadedModel:
        """Load, warm up and self-check one version; raises StartupError with the reason."""
        directory = model_repository.version_dir(self.repository, name, version)
        path = directory / MODEL_FILENAME
        self._check_inside(directory, path, directory / SIDECAR_FILENAME)
        try:
            model_bytes = path.read_bytes()
            sidecar = model_repository.read_sidecar(directory)
        except FileNotFoundError as exc:
            raise StartupError(f"{directory}: missing {Path(exc.filename).name}") from None
        except (OSError, ValueError) as exc:
            raise StartupError(f"{directory}: unreadable ({exc})") from None
        try:
            model_repository.check_sidecar(directory, sidecar, model_bytes)
        except model_repository.VersionRefused as exc:
            raise StartupError(str(exc)) from None
        runner = OnnxRunner(
            path, self.providers, self.run_threads, model_bytes=model_bytes, device=self.device
        )
        if self.provider is not None and runner.provider != self.provider:
            raise StartupError(
                f"{directory}: runs on {runner.provider}, but this server serves on {self.provider}"
            )
        if runner.provider == CPU and self.providers != [CPU]:
            self.providers = [CPU]  # --device auto fell back (logged once): later builds ask for the CPU
        # A GPU run includes copies and may wait on the device: never on the event loop.
        on_cpu = runner.provider == CPU
        batcher = DynamicBatcher(
            runner.run,
            self.batching,
            self.metrics.batch_observer(name),
            self.inline_max_images if on_cpu else 0,
            runner.every_core_from if on_cpu and self.inline_big_runs else None,
        )
        model = LoadedModel(name, version, runner, batcher)
        model.warm_up()
        model.self_check()
        return model

    def _check_inside(self, *paths: Path) -> None:
        """Symlinks may not lead out of the repository (a model is what the repository holds)."""
        root = self.repository.resolve()
        for path in paths:
            resolved = path.resolve()
            if resolved != root and root not in resolved.parents:
                raise StartupError(f"{path}: leads outside the model repository (to {resolved})")

    def names(self) -> list[str]:
        """The models of the repository: directories with at least one version."""
        if not self.repository.is_dir():
            return []
        return [
            entry.name
            for entry in sorted(self.repository.iterdir())
            if entry.is_dir() and model_repository.list_versions(self.repository, entry.name)
        ]

    def wanted_version(self, name: str) -> int | None:
        """The version of ``name`` that should serve: the pinned one for 'mnist', else the newest."""
        versions = model_repository.list_versions(self.repository, name)
        if name == MODEL_NAME and self.pinned_version is not None:
            return self.pinned_version if self.pinned_version in versions else None
        return versions[-1] if versions else None

    def wanted(self) -> dict[str, int]:
        """For each model this mode serves, the version that should be serving."""
        names = self.names()
        if self.mode == "explicit":
            names = [name for name in names if name in self.requested]
        wanted = {}
        for name in names:
            version = self.wanted_version(name)
            if version is not None:
                wanted[name] = version
        return wanted

    def pending(self) -> list[tuple[str, int]]:
        """Versions that should be loaded and are not (skipping refused, unchanged ones)."""
        todo = []
        for name, version in self.wanted().items():
            if self.default.get(name) == version:
                continue
            refused = self._refused.get((name, version))
            if refused is not None and refused == self._signature(name, version):
                continue
            todo.append((name, version))
        return todo

    def refuse(self, name: str, version: int, reason: str) -> None:
        """Remember a refused version (until its files change), log it and count it."""
        self._refused[(name, version)] = self._signature(name, version)
        self.reasons[name] = f"version {version} refused: {reason}"
        log.error("refused model %s version %d: %s", name, version, reason)
        self.metrics.model_loads.labels(name, str(version), "failed").inc()

    def try_build(self, name: str, version: int) -> LoadedModel | None:
        """Build, or refuse: any failure (not only StartupError) is recorded, logged and counted."""
        try:
            model = self.build(name, version)
        except Exception as exc:  # a broken version must never stop the server or the poll
            self.refuse(name, version, str(exc) if isinstance(exc, StartupError) else repr(exc))
            return None
        self._refused.pop((name, version), None)
        return model

    # --- installing (on the event loop) ------------------------------------------------

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` the served version of its name; returns the version it replaced."""
        model.batcher.start()
        self.reasons.pop(model.name, None)
        if self.provider is None:
            self.provider = model.runner.provider
        versions = self.models.setdefault(model.name, {})
        previous = versions.get(self.default.get(model.name, -1))
        versions[model.version] = model
        self.default[model.name] = model.version
        log.info(
            "serving model %s version %d (provider %s)%s",
            model.name,
            model.version,
            model.runner.provider,
            f", replacing version {previous.version}" if previous else "",
        )
        self.metrics.model_loads.labels(model.name, str(model.version), "ok").inc()
        self.metrics.queue_depth.labels(model.name).set_function(
            lambda name=model.name: sum(m.batcher.queue_depth for m in self.models.get(name, {}).values())
        )
        if model.name == MODEL_NAME:
            self.metrics.info.info(
                {
                    "version": model.version_str,
                    "model": model.name,
                    "provider": model.runner.provider,
                    "server_version": __version__,
                }
            )
        if previous is not None and previous.version != model.version:
            del versions[previous.version]
            return previous
        return None

    def uninstall(self, name: str, reason: str) -> list[LoadedModel]:
        """Stop serving ``name`` (explicit mode): new calls no longer find it; returns its
        versions, for the caller to retire once the calls that hold them are answered."""
        self.requested.discard(name)
        removed = list(self.models.pop(name, {}).values())
        self.default.pop(name, None)
        self.reasons[name] = reason
        for model in removed:
            log.info("unloaded model %s version %d", model.name, model.version)
        return removed

    def check_repository(self) -> None:
        """Before the port opens: a repository without 'mnist' (or, in explicit mode, without a
        model --load-model names) is a configuration error.

        The process exits 2 without ever binding, so a supervisor sees a clear failure
        instead of a server that listens, then dies.
        """
        if not self.repository.is_dir():
            raise StartupError(
                f"--model-repository {self.repository}: no such directory; "
                "run mnist-train and mnist-export first (or `make run`)"
            )
        wanted = self.wanted()
        if self.mode == "explicit":
            for name in sorted(self.requested - set(wanted)):
                raise StartupError(
                    f"--load-model {name}: no servable version in {self.repository} "
                    f"(models there: {', '.join(self.names()) or 'none'})"
                )
            return
        if MODEL_NAME not in wanted:
            versions = model_repository.list_versions(self.repository, MODEL_NAME)
            if self.pinned_version is not None and versions:
                raise StartupError(
                    f"--model-version {self.pinned_version}: {MODEL_NAME} has versions {versions}"
                )
            raise StartupError(
                f"--model-repository {self.repository}: no published '{MODEL_NAME}' model "
                f"(expected {self.repository}/{MODEL_NAME}/<version>/{MODEL_FILENAME})"
            )

    def load_initial(self) -> list[LoadedModel]:
        """Start-up: build every wanted model (in the caller's thread); 'mnist' is required.
        The repository was checked before the port opened (``check_repository``)."""
        wanted = self.wanted()
        for name in self.names():  # explicit mode: what the repository holds and no one asked for
            if name not in wanted:
                self.reasons.setdefault(name, "never loaded")
        built = []
        for name, version in wanted.items():
            required = name in self.requested if self.mode == "explicit" else name == MODEL_NAME
            if required:  # any failure stops the start-up, as a StartupError
                try:
                    built.append(self.build(name, version))
                except Exception as exc:
                    self.refuse(name, version, str(exc) if isinstance(exc, StartupError) else repr(exc))
                    if isinstance(exc, StartupError):
                        raise
                    raise StartupError(f"{name} v{version}: {type(exc).__name__}: {exc}") from None
            else:
                model = self.try_build(name, version)
                if model is not None:
                    built.append(model)
        return built

    # --- lookup ------------------------------------------------------------------------

    def ready(self) -> bool:
        """Ready for calls: 'mnist' is loaded, or in explicit mode any model is."""
        return bool(self.default) if self.mode == "explicit" else MODEL_NAME in self.default

    def versions(self, name: str) -> list[int]:
        return sorted(self.models.get(name, {}))

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The loaded model for a name and version ('' = the served default); ModelNotFound else."""
        versions = self.models.get(name)
        if versions is None:
            reason = self.reasons.get(name)  # a model of the repository: no I/O on a miss
            if reason is not None:
                raise ModelNotFound(
                    f"model_name: '{name[:100]}' is not loaded ({reason[:300]}); "
                    f"loaded: {sorted(self.models)}"
                    + ("; load it with RepositoryModelLoad" if self.mode == "explicit" else "")
                )
            raise ModelNotFound(f"model_name: '{name[:100]}' is not served; available: {sorted(self.models)}")
        if not version:
            return versions[self.default[name]]
        if not VERSION.fullmatch(version):  # "01", "²", "١" and 5,000 digits are not versions
            raise ModelNotFound(
                f"model_version: '{version[:40]}' is not a version number (1 to 9 ASCII digits)"
            )
        if int(version) not in versions:
            raise ModelNotFound(
                f"model_version: '{version}' of '{name}' is not loaded; "
                f"loaded: {sorted(str(v) for v in versions)}"
            )
        return versions[int(version)]

    def all(self) -> list[LoadedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    async def close(self) -> None:
        for model in self.all():
            await model.batcher.close()
