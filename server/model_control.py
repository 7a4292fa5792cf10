"""Model control with Triton's names: ``poll`` (new versions load as they appear), ``explicit``
(models load and unload through the repository API) and ``none`` (what loaded at start stays).

Every change goes through here, one at a time: a version is built off the event loop (load,
warm-up, self-check) and installed in one step; a version taken out of service is retired
only once the calls that resolved it are answered, so neither a reload nor an unload fails a
call. A failed load leaves what is served as it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from mnist_serving.server.errors import FailedPrecondition, InvalidInput, ModelNotFound
from mnist_serving.server.models import LoadedModel, ModelStore

log = logging.getLogger(__name__)


class ModelControl:
    """One per server process (model control is per process: each replica holds its own)."""

    def __init__(
        self,
        store: ModelStore,
        load_timeout: float,
        poll_interval: float,
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.load_timeout = load_timeout
        self.poll_interval = poll_interval
        self.on_change = on_change  # readiness follows the models loaded
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()

    @property
    def mode(self) -> str:
        return self.store.mode

    def start_polling(self) -> None:
        if self.mode == "poll" and self.poll_interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="model-watcher")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("model repository scan failed; current models keep serving")

    async def poll_once(self) -> None:
        """Load whatever new version the repository holds and swap it in."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            for name, version in await loop.run_in_executor(None, self.store.pending):
                await self._build_and_install(name, version)

    async def _build_and_install(self, name: str, version: int) -> str | None:
        """Build and serve one version; the reason it was refused, or None once it serves."""
        loop = asyncio.get_running_loop()
        building = loop.run_in_executor(None, self.store.try_build, name, version)
        try:
            model = await asyncio.wait_for(building, self.load_timeout)
        except TimeoutError:
            # The thread cannot be stopped; the version is refused and never installed.
            self.store.refuse(name, version, f"not built within {self.load_timeout:g} s")
            return self.store.reasons[name]
        if model is None:
            return self.store.reasons.get(name, "refused")
        self._retire(self.store.install(model))
        await self.on_change()
        return None

    def _retire(self, *models: LoadedModel | None) -> None:
        """Calls that resolved these versions finish there; then each is dropped."""
        loop = asyncio.get_running_loop()
        for model in models:
            if model is not None:
                task = loop.create_task(model.retire())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _explicit(self, action: str) -> None:
        if self.mode != "explicit":
            raise FailedPrecondition(
                f"cannot {action} models in --model-control-mode {self.mode}; "
                "start the server with --model-control-mode explicit"
            )

    async def load(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        """Serve ``name``'s wanted version (the newest, or the one --model-version pins);
        loading a model that serves that version already changes nothing."""
        self._explicit("load")
        if parameters:
            raise InvalidInput(
                f"{sorted(parameters)[:5]}: this server loads only what its repository holds "
                "(no config or file overrides)",
                "parameters",
            )
        async with self._lock:
            names = self.store.names()
            if name not in names:
                raise ModelNotFound(
                    f"model_name: '{name[:100]}' is not in the model repository "
                    f"(models there: {', '.join(names) or 'none'})"
                )
            version = self.store.wanted_version(name)
            if version is None:
                raise ModelNotFound(f"model_name: '{name}': the version --model-version pins is not there")
            self.store.requested.add(name)
            if self.store.default.get(name) == version:
                return
            reason = await self._build_and_install(name, version)
            if reason is not None:
                if name not in self.store.default:
                    self.store.requested.discard(name)
                raise FailedPrecondition(f"failed to load '{name}': {reason}")
        log.info("loaded model %s version %d (repository API)", name, version)

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; returns once the calls it had taken are answered."""
        self._explicit("unload")
        async with self._lock:
            if name not in self.store.models:
                if name not in self.store.names():
                    raise ModelNotFound(f"model_name: '{name[:100]}' is not in the model repository")
                return  # not loaded: nothing to do, as Triton answers
            removed = self.store.uninstall(name, "unloaded through the repository API")
            await self.on_change()
            await asyncio.gather(*(model.retire() for model in removed))

    def stop_polling(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    async def close(self) -> None:
        self.stop_polling()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
