"""Latency and throughput of a callable, measured the way the numbers will be read.

Warm up until two consecutive windows agree (allocator, caches and lazy init settle), then time
`repeats` calls; report the median and p99 so one slow outlier neither hides nor dominates.
Several variants are timed *interleaved* (round-robin, rotating the order every round), so a burst
of machine noise lands on all of them alike and their ratios stay honest.
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


def settle(fn: Callable[[], object], window: int = 10, max_spread: float = 1.5, max_seconds: float = 30.0) -> float:
    """Call `fn` until the median of its last `window` calls agrees with the window before (within
    10 %) and their p99/p50 is at most `max_spread`, or `max_seconds` pass; returns that last spread.
    A plain warm-up stops when medians agree, while one slow call in ten (a lazy compile, page faults
    of a first large batch, another process waking up) still shows as a p99 ten times the p50; a
    reader comparing p99s needs that tail gone before timing starts."""
    times: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode():
        while True:
            times.extend(time_calls(fn, 1))
            recent, before = times[-window:], times[-2 * window:-window]
            spread = percentile(recent, 99) / max(percentile(recent, 50), 1e-12)
            steady = len(before) == window and abs(statistics.median(recent) / statistics.median(before) - 1) <= 0.1
            if (steady and spread <= max_spread) or time.perf_counter() - start > max_seconds:
                return spread


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


def interleaved(fns: dict[str, Callable[[], object]], batch: int, rounds: int = 10, calls_per_round: int = 2,
                warmup_seconds: float = 5.0, max_seconds: float | None = None, min_rounds: int = 3,
                on_round: Callable[[int, int], None] | None = None) -> dict[str, Timing]:
    """Time several variants in one run, round-robin, so machine noise hits them alike.

    Each variant is warmed up until stable, then every round calls each variant `calls_per_round`
    times; the starting variant rotates each round so none always runs right after the same
    neighbour (cache and frequency effects). With `max_seconds`, the number of rounds is cut to fit
    the time budget (never below `min_rounds`), estimated from the first round.
    `on_round(done, total)` reports progress.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for name in names:
            warm_up(fns[name], max_seconds=warmup_seconds)
        total = rounds
        start = time.perf_counter()
        r = 0
        while r < total:
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].extend(time_calls(fns[name], calls_per_round))
            r += 1
            if r == 1 and max_seconds is not None:
                per_round = time.perf_counter() - start
                total = max(min_rounds, min(rounds, int(max_seconds / max(per_round, 1e-9))))
            if on_round is not None:
                on_round(r, total)
    return {n: summarize(samples[n], batch) for n in names}
