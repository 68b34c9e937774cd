"""Latency and throughput of a callable, measured the way the numbers will be read.

Warm up until two consecutive windows agree (allocator, caches and lazy init settle), then time
`repeats` calls; report the median and p99 so one slow outlier neither hides nor dominates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # items per second at the median latency
    repeats: int
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def warm_up(fn: Callable[[], object], min_calls: int = 3, max_seconds: float = 5.0, window: int = 3,
            tolerance: float = 0.1) -> None:
    """Call `fn` until the median of the last `window` calls is within `tolerance` of the window before."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= max(min_calls, 2 * window):
            now, before = statistics.median(times[-window:]), statistics.median(times[-2 * window:-window])
            if abs(now - before) <= tolerance * before:
                return
        if time.perf_counter() - start > max_seconds:
            return


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call for `repeats` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summarize(seconds: list[float], batch: int) -> Timing:
    ms = [s * 1000 for s in seconds]
    p50 = percentile(ms, 50)
    return Timing(p50_ms=p50, p99_ms=percentile(ms, 99), mean_ms=statistics.fmean(ms),
                  throughput=batch / (p50 / 1000), repeats=len(ms), batch=batch)


def measure(fn: Callable[[], object], batch: int, repeats: int = 20, warmup_seconds: float = 5.0) -> Timing:
    """Warm up, then time `repeats` calls of `fn` (which processes `batch` items)."""
    with torch.inference_mode():
        warm_up(fn, max_seconds=warmup_seconds)
        return summarize(time_calls(fn, repeats), batch)
