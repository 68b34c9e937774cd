"""Time systems round-robin, each in a process of its own.

Why: two inference runtimes in one process do not leave each other alone. CTranslate2 and torch each
bring their own OpenMP runtime; once CTranslate2 has run in a process, torch's small parallel regions
there (a batch-1 decoding step is ~100 of them) wake their threads late: measured on AMD EPYC with 2
threads, slimformer's int8 Whisper decoding step went from 3.6 to 8.3 ms after three CTranslate2 calls in
the same process, and stayed there. A user runs one engine per process, so each system is built and
timed in its own spawned process; the parent only hands out the inputs, in the same rotating
round-robin order as `timing.interleaved`, so machine noise still lands on every system alike. The
seconds are measured inside the worker, around the call alone (no pickling, no pipe).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ..errors import SlimformerError

# Builds a system inside the worker process: must pickle (a module-level function, or a partial of one).
Factory = Callable[[], Callable[[Any], object]]


def _worker(factory: Factory, conn: Connection) -> None:
    try:
        run = factory()
        conn.send(("ready", None))
        while (item := conn.recv()) is not None:
            start = time.perf_counter()
            result = run(item)
            conn.send(("ok", (time.perf_counter() - start, result)))
    except Exception as e:  # reported to the parent, which raises it with the system's name
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _answer(name: str, conn: Connection) -> Any:
    try:
        status, value = conn.recv()
    except EOFError:
        raise SlimformerError(f"worker {name!r} died without an answer (killed, or out of memory?)") from None
    if status == "error":
        raise SlimformerError(f"worker {name!r} failed: {value}")
    return value


def _start(ctx: Any, name: str, factory: Factory) -> tuple[Connection, Any]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(factory, child), daemon=True, name=f"slimformer-{name}")
    proc.start()
    child.close()
    return parent, proc


def _stop(pipes: dict[str, Connection], procs: list) -> None:
    for conn in pipes.values():
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(None)
        conn.close()
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()


def call_isolated(name: str, factory: Factory, items: Sequence[Any]) -> list[tuple[float, Any]]:
    """(seconds, result) of each item through one system built in a fresh process: quality passes
    run apart from other engines too, so no runtime another system left behind touches the numbers."""
    pipe, proc = _start(mp.get_context("spawn"), name, factory)
    try:
        _answer(name, pipe)
        out = []
        for item in items:
            pipe.send(item)
            out.append(_answer(name, pipe))
        return out
    finally:
        _stop({name: pipe}, [proc])


def time_isolated(factories: dict[str, Factory], items: Sequence[Any], warmup: int = 1,
                  on_item: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each call, per system: every system runs every item once (after `warmup` untimed
    calls on the first item), the starting system rotating from item to item."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited from the parent's runtimes
    names = list(factories)
    pipes: dict[str, Connection] = {}
    procs = []
    try:
        for name in names:
            pipes[name], proc = _start(ctx, name, factories[name])
            procs.append(proc)
        for name in names:
            _answer(name, pipes[name])
            for _ in range(warmup):
                pipes[name].send(items[0])
                _answer(name, pipes[name])
        times: dict[str, list[float]] = {n: [] for n in names}
        for i, item in enumerate(items):
            for name in names[i % len(names):] + names[:i % len(names)]:
                pipes[name].send(item)
                times[name].append(float(_answer(name, pipes[name])[0]))
            if on_item is not None:
                on_item(i + 1, len(items))
        return times
    finally:
        _stop(pipes, procs)
