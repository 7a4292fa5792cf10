"""Whether the server accepts calls, and how many it is still answering (for draining)."""

from __future__ import annotations

import asyncio
import time

from mnist_serving.server.errors import NotReady

QUIET_PERIOD = 1.0  # seconds without any call activity before the transport is closed


class Lifecycle:
    """Draining refuses new calls with UNAVAILABLE while accepted ones are still answered.

    The transport is closed only once nothing is in flight and callers have stopped
    arriving for a moment, so a client sees UNAVAILABLE (retryable) rather than a call
    cut off by the closing connection.
    """

    def __init__(self) -> None:
        self.accepting = True
        self.inflight = 0
        self.last_activity = 0.0  # last admission, answer or refusal (time.monotonic())
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """Admit one call, or refuse it when draining."""
        self.last_activity = time.monotonic()
        if not self.accepting:
            raise NotReady("server is shutting down; retry on another replica")
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.last_activity = time.monotonic()
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def drain(self, timeout: float, quiet: float = QUIET_PERIOD) -> bool:
        """Stop admitting calls; wait until admitted ones are answered. True if they all were."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        # Callers that were active get time to arrive, be refused, and go elsewhere (calls
        # still in the transport when it closes would be cut off); an idle server closes at once.
        while (wait := min(self.last_activity + quiet, deadline) - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        return self.inflight == 0
