"""What a benchmark runs (``BenchSettings``), and how calls are timed and summarised."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np

#: Warm-up "auto": runs in rounds of this many until two rounds' medians agree within STABLE_RATIO.
WARMUP_ROUND = 3
STABLE_RATIO = 0.05
MAX_WARMUP_RUNS = 60
NOISY_CV = 0.10


@dataclass(frozen=True)
class BenchSettings:
    batches: tuple[int, ...] = (1,)
    height: int = 512
    width: int = 512
    #: Untimed runs first; None: until latency is stable (see WARMUP_ROUND).
    warmup: int | None = 3
    iterations: int = 20
    #: When set, run for this many seconds instead of a fixed number of iterations.
    seconds: float | None = None
    threads: int | None = None
    #: Root of the sysfs tree read for Jetson power and thermal state.
    jetson_root: str = "/"
    #: Also time the dense CRF (CPU kernel, DeepLab's parameters) as a post-processing step.
    crf: bool = False
    extra: dict = field(default_factory=dict)


def latency_stats(times_ms, batch: int) -> dict:
    ms = np.asarray(times_ms, dtype=np.float64)
    median = float(np.median(ms))
    mean = float(ms.mean())
    return {
        "iterations": int(ms.size),
        "median_ms": median,
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        # Coefficient of variation: above NOISY_CV the machine was too busy for fine comparisons.
        "cv": float(ms.std() / mean) if mean > 0 else 0.0,
        "throughput_ips": batch * 1e3 / median if median > 0 else float("inf"),
    }


def warm_up(fn, warmup: int | None) -> int:
    """Run ``fn`` untimed; return how many runs it took."""
    if warmup is not None:
        for _ in range(warmup):
            fn()
        return warmup
    previous, runs = None, 0
    while runs < MAX_WARMUP_RUNS:
        current = float(np.median(timed_runs(fn, WARMUP_ROUND)))
        runs += WARMUP_ROUND
        if previous is not None and abs(current - previous) <= STABLE_RATIO * previous:
            break
        previous = current
    return runs


def timed_runs(fn, count: int | None = None, seconds: float | None = None) -> list[float]:
    """Milliseconds of each call: ``count`` calls, or as many as fit in ``seconds`` (at least 3)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None
    while (len(times) < count) if deadline is None else (time.perf_counter() < deadline or len(times) < 3):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
