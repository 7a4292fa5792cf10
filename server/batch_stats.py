"""What the batcher measures: each run's timing, and one statistics record per model version
(read by /metrics, and by anything else that reports on runs: nothing else keeps counts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RunTiming:
    """One run, timed in the thread that ran it (a batch may wait there before it starts)."""

    images: int
    started: float  # time.monotonic()
    seconds: float
    started_ns: int  # wall clock, for traces
    ended_ns: int


BatchObserver = Callable[[RunTiming, list[float]], None]  # the run, and each request's queue wait


@dataclass
class BatchStats:
    """What one model version's batcher did; /metrics reads it (nothing else keeps counts).

    ``runs_by_size``: runs of each batch size → (runs, seconds in onnxruntime)."""

    runs_by_size: dict[int, list] = field(default_factory=dict)
    queue_waits: int = 0  # requests that reached a run
    queue_seconds: float = 0.0
    dropped_expired: int = 0
    dropped_cancelled: int = 0
    refused_overload: int = 0
    last_run_ns: int = 0

    @property
    def runs(self) -> int:
        return sum(runs for runs, _ in self.runs_by_size.values())

    @property
    def images(self) -> int:
        return sum(size * runs for size, (runs, _) in self.runs_by_size.items())

    def record(self, timing: RunTiming, waits: list[float]) -> None:
        entry = self.runs_by_size.setdefault(timing.images, [0, 0.0])
        entry[0] += 1
        entry[1] += timing.seconds
        self.queue_waits += len(waits)
        self.queue_seconds += sum(waits)
        self.last_run_ns = timing.ended_ns
