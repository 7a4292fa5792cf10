"""What the batcher measures: each run's timing, and one statistics record per model version
(read by /metrics and by the statistics extension: nothing else keeps counts)."""

from __future__ import annotations

import time
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


class RequestTimes:
    """Where one request's time went, filled in as it goes: decoding (``input``), the
    batcher's queue, the onnxruntime runs that held its images (``infer``), and the instant
    its results were ready (``inferred_at``, time.perf_counter()), from which building the
    answer is timed, to the call's end or to ``answered``."""

    __slots__ = ("started", "input", "queue", "infer", "inferred_at", "answered")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.input = self.queue = self.infer = 0.0
        self.inferred_at: float | None = None
        self.answered: float | None = None  # a stream's message, answered before its call ends


@dataclass
class Duration:
    """A count and the seconds they took (Triton's StatisticDuration, in seconds)."""

    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds


@dataclass
class SizeStats:
    """Runs of one batch size: preparing the input, the onnxruntime run, splitting the output."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class BatchStats:
    """What one model version did; /metrics and the statistics extension read it.

    Per request (Triton's ``inference_stats``): successes and failures with their whole
    duration; for each success its queue wait, decoding, run and answer building. Per run
    (``runs_by_size``): each batch size's runs with their input, run and output times."""

    runs_by_size: dict[int, SizeStats] = field(default_factory=dict)
    dropped_expired: int = 0
    dropped_cancelled: int = 0
    refused_overload: int = 0
    last_run_ns: int = 0
    fail: Duration = field(default_factory=Duration)
    success_count: int = 0
    success_seconds: float = 0.0
    queue_sum: float = 0.0
    input_sum: float = 0.0
    infer_sum: float = 0.0
    output_sum: float = 0.0

    @property
    def runs(self) -> int:
        return sum(entry.compute_infer.count for entry in self.runs_by_size.values())

    @property
    def images(self) -> int:
        return sum(size * entry.compute_infer.count for size, entry in self.runs_by_size.items())

    def record(self, timing: RunTiming, input_s: float = 0.0, output_s: float = 0.0) -> None:
        entry = self.runs_by_size.get(timing.images)
        if entry is None:
            entry = self.runs_by_size[timing.images] = SizeStats()
        entry.compute_input.add(input_s)
        entry.compute_infer.add(timing.seconds)
        entry.compute_output.add(output_s)
        self.last_run_ns = timing.ended_ns

    def request(self, ok: bool, times: RequestTimes, now: float) -> None:
        """One request that reached this version ended (``now``, time.perf_counter()), ``ok`` or not."""
        end = now if times.answered is None else times.answered
        if not ok:
            self.fail.add(end - times.started)
            return
        # Every success has each step: one count for all of them (read by ``counted``).
        self.success_count += 1
        self.success_seconds += end - times.started
        self.queue_sum += times.queue
        self.input_sum += times.input
        self.infer_sum += times.infer
        self.output_sum += 0.0 if times.inferred_at is None else end - times.inferred_at

    def counted(self) -> dict[str, Duration]:
        """Per request, as Triton reports it: success, fail, queue, compute input, infer, output."""
        count = self.success_count
        return {
            "success": Duration(count, self.success_seconds),
            "fail": self.fail,
            "queue": Duration(count, self.queue_sum),
            "compute_input": Duration(count, self.input_sum),
            "compute_infer": Duration(count, self.infer_sum),
            "compute_output": Duration(count, self.output_sum),
        }
