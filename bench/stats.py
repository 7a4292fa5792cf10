"""One summary for every closed-loop load generator (numpy only, so any process can import it)."""

from __future__ import annotations

import numpy as np


def summary(latencies: list[float], counts: dict, elapsed: float) -> dict:
    """Counts plus rates and p50/p90/p99 latency in milliseconds."""
    ms = np.array(latencies) * 1e3 if latencies else np.zeros(1)
    return {
        **counts,
        "seconds": elapsed,
        "requests_per_s": counts["requests"] / elapsed,
        "images_per_s": counts["images"] / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
    }
