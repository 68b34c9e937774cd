"""Multi-process batched inference: N worker processes x T intra-op threads behind one bounded queue.

Both `slimformer parallel serve` (an in-process benchmark harness) and `slimformer serve` (HTTP) run
on this one implementation; what differs per model kind is a `Handler` (what a request item is, how
items form a batch, what a worker computes).

Why processes: on a CPU, one process with T threads splits every matmul T ways and synchronizes T
threads per op; N independent processes each run whole batches with no synchronization at all, which
wins for the small matmuls of small models.

Why batching happens in the front end: a request crosses a process boundary as a pickled message, and
for a small model the per-message cost (lock, pipe write, unpickle) is a sizable fraction of the
per-item compute. So `submit` only puts the request on an in-process queue; one batcher thread takes
the oldest waiting request, then the waiting ones closest to it in size (similar lengths pad little),
until it has `max_batch` items or `max_batch_tokens` padded tokens (TEI's token budget) or the oldest
has waited `max_wait_ms`, and sends the whole batch to one worker as one message. Each worker has its
own pipes and holds at most `DEPTH` batches (one running, one waiting), so the front end always knows
which requests a worker holds; while all workers are busy, requests gather for the next, fuller batch,
so batches grow with load on their own.

The request queue is *bounded*: when it is full `submit` refuses at once (counted in `refused`)
instead of letting the queue and every request's latency grow without limit. Every accepted request
ends exactly once as `answered`, `failed` (the model raised on its batch) or `lost` (its worker died,
hung, or the server stopped); `submitted = answered + refused + lost + failed` always holds. A worker
that dies or stops beating is named. With `restart` (HTTP serving) it is replaced and only the
requests it held are lost; without it (the benchmark harness) the error stops the server.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_connections
from typing import Any

import numpy as np

from ..bench.timing import percentile
from ..errors import SlimformerError
from .common import check_positive
from .launch import JobFailed

log = logging.getLogger(__name__)

DEPTH = 2  # batches a worker holds at once: one running, one waiting in its pipe (hides the pipe transfer)
LATENCY_WINDOW = 200_000  # latencies kept for percentiles: a long-running server must not grow without bound


class Refused(Exception):
    """The bounded request queue is full: retry later (HTTP says 429)."""


class Lost(Exception):
    """The worker holding this accepted request died or hung, or the server stopped (HTTP says 503)."""


class Failed(Exception):
    """The model raised on this request's batch; the worker lives on (HTTP says 500)."""


@dataclass
class ServeConfig:
    nproc: int = 2
    threads: int = 1
    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue_size: int = 256
    hang_timeout: float = 20.0  # a batch running longer than this, or a silent worker, is a dead worker
    max_batch_tokens: int = 0  # padded tokens per batch (items x longest); 0: no token budget
    restart: bool = False  # replace a dead worker (its requests are lost) instead of stopping the server
    flags: tuple[str, str] = ("--nproc", "--queue-size")  # how the command line names nproc, queue_size

    def validate(self) -> None:
        nproc_flag, queue_flag = self.flags
        check_positive(nproc_flag, self.nproc)
        check_positive("--threads", self.threads)
        check_positive("--max-batch", self.max_batch)
        check_positive(queue_flag, self.queue_size)
        if self.max_wait_ms < 0:
            raise SlimformerError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if isinstance(self.max_batch_tokens, bool) or not isinstance(self.max_batch_tokens, int) \
                or self.max_batch_tokens < 0:
            raise SlimformerError(f"--max-batch-tokens must be an integer >= 0, got {self.max_batch_tokens!r}")
        cores = os.cpu_count() or 1
        if self.nproc * self.threads > 4 * cores:
            raise SlimformerError(f"{nproc_flag} {self.nproc} x --threads {self.threads} = {self.nproc * self.threads} "
                                  f"threads on {cores} cores: at most {4 * cores} (oversubscription only slows it)")


class Handler:
    """How one kind of request is served. The default: an item is a tuple of fixed-shape numpy arrays
    (one image, or token ids and a mask), a batch stacks them, a worker returns the model's main output.

    A subclass must be a module-level class with picklable attributes: it travels to spawned workers.
    `cost` and `collate` run in the front end, `load` and `run` in a worker.
    """

    def cost(self, item: Any) -> int:
        """Tokens the item occupies in a padded batch (the token budget counts items x the longest)."""
        return 1

    def collate(self, items: list[Any]) -> Any:
        return tuple(np.stack([it[i] for it in items]) for i in range(len(items[0])))

    def load(self, ref: str) -> Any:
        from .. import io

        return io.load(ref).eval()

    def run(self, state: Any, batch: Any) -> Sequence[Any]:
        """One output per item of `batch`, in order."""
        import torch

        from .common import output_of

        return output_of(state, tuple(torch.from_numpy(a) for a in batch)).numpy()


def pick_batch(costs: Sequence[int], max_batch: int, max_tokens: int) -> list[int]:
    """Indices into the waiting requests (oldest first) that form the next batch: always the oldest
    (nothing starves), then those closest to it in cost while the batch keeps `<= max_batch` items and
    `items x longest <= max_tokens` padded tokens (`max_tokens` 0: count only)."""
    if not max_tokens:
        return list(range(min(len(costs), max_batch)))
    chosen, longest = [0], costs[0]
    for i in sorted(range(1, len(costs)), key=lambda j: (abs(costs[j] - costs[0]), j)):
        if len(chosen) == max_batch:
            break
        if max(longest, costs[i]) * (len(chosen) + 1) <= max_tokens:
            chosen.append(i)
            longest = max(longest, costs[i])
    return sorted(chosen)


def _worker(rank: int, ref: str, threads: int, handler: Handler, inbox, outbox, status) -> None:
    """One serving process: load the model, then answer batches until it gets None or its pipe closes.

    SIGINT / SIGTERM are ignored: a Ctrl-C or a service manager's TERM to the whole process group must
    not kill batches the front end is draining; the front end ends the worker (or its pipe closes)."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    try:
        state = handler.load(ref)
    except Exception as e:  # noqa: BLE001 - reported to the front end, which names it and stops
        outbox.send(("failed", [], f"{type(e).__name__}: {e}"))
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.5):
            status[2 * rank] = time.time()

    status[2 * rank] = time.time()
    threading.Thread(target=beat, daemon=True).start()
    outbox.send(("ready", [], os.getpid()))
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        ids, batch = message
        status[2 * rank + 1] = time.time()
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                out = handler.run(state, batch)
            reply = ("done", ids, (out, time.perf_counter() - t))
        except Exception as e:  # noqa: BLE001 - this batch failed, the worker serves the next one
            reply = ("error", ids, f"{type(e).__name__}: {e}")
        status[2 * rank + 1] = 0.0
        outbox.send(reply)
    stop.set()


@dataclass
class _Slot:
    """One worker process, the parent's ends of its pipes, and the batches (request ids) it holds."""

    rank: int
    proc: Any
    inbox: Any  # parent -> worker
    outbox: Any  # worker -> parent
    ready: bool = False
    gone: bool = False
    batches: deque = field(default_factory=deque)
    used: float = 0.0


class Server:
    """Start with `with Server(ref, config) as s:`; `s.submit(item)` returns a Future of the output.

    `item` is one request's input in the handler's form (by default its model inputs without the batch
    dimension, as numpy arrays: one image `[C, H, W]`, or token ids `[T]` and a mask `[T]`).
    `stats()` gives the counts and latencies; `on_batch(items, padded_tokens, seconds)` is called for
    every answered batch (metrics).
    """

    def __init__(self, ref: str, config: ServeConfig, handler: Handler | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None):
        config.validate()
        self.ref, self.config = ref, config
        self.handler = handler or Handler()
        self.on_batch = on_batch
        self._ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        self.status = self._ctx.Array("d", 2 * config.nproc, lock=False)  # per rank: heartbeat, busy-since
        self.slots: list[_Slot] = []
        self.waiting: deque = deque()  # (id, t, item, cost) accepted, not yet batched; at most queue_size
        self.pending: dict[int, tuple[Future, float]] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.counts = {"submitted": 0, "answered": 0, "refused": 0, "lost": 0, "failed": 0, "restarts": 0}
        self.error: str | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._next_id = 0
        self._stop = threading.Event()
        self._shutdown_lock = threading.Lock()  # the monitor and close() may both shut down: one at a time
        self._closing = False  # set before workers are told to exit, so their exit is not a fault
        self._started = False

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def procs(self) -> list:
        return [s.proc for s in self.slots]

    def accepting(self) -> bool:
        """True once started, until closing or failed (also while a dead worker is being replaced)."""
        return self._started and not self._closing and not self.error

    def ready(self) -> bool:
        """True while every worker is loaded and the server accepts requests."""
        with self._lock:
            return self.accepting() and all(s.ready for s in self.slots)

    # ------------------------------------------------------------------------------------ workers

    def _spawn(self, rank: int) -> _Slot:
        inbox_r, inbox_w = self._ctx.Pipe(duplex=False)
        outbox_r, outbox_w = self._ctx.Pipe(duplex=False)
        self.status[2 * rank] = self.status[2 * rank + 1] = 0.0
        p = self._ctx.Process(target=_worker, name=f"slimformer-serve-{rank}", daemon=True,
                              args=(rank, self.ref, self.config.threads, self.handler, inbox_r, outbox_w, self.status))
        p.start()
        inbox_r.close()  # the worker's ends: closing ours makes a dead worker's pipe read as EOF at once
        outbox_w.close()
        return _Slot(rank, p, inbox_w, outbox_r)

    def start(self, timeout: float = 120.0) -> None:
        """Start the workers and wait until every one has loaded the model."""
        self.slots = [self._spawn(rank) for rank in range(self.config.nproc)]
        threading.Thread(target=self._collect, daemon=True, name="serve-results").start()
        threading.Thread(target=self._monitor, daemon=True, name="serve-monitor").start()
        deadline = time.time() + timeout
        with self._cond:
            while not all(s.ready for s in self.slots) and not self.error and time.time() < deadline:
                self._cond.wait(0.2)
            error = self.error or (None if all(s.ready for s in self.slots)
                                   else f"serve workers not ready within {timeout:.0f} s")
            self._started = error is None
        if error:
            self.close()
            raise JobFailed(error)
        threading.Thread(target=self._batch, daemon=True, name="serve-batcher").start()

    def _lose(self, slot: _Slot, reason: str) -> None:
        """A worker died or hung: its requests are lost (answered with `Lost`), then it is replaced
        (with `restart`) or the server stops."""
        with self._cond:
            if slot.gone:
                return
            slot.gone, slot.ready = True, False
            held = [rid for ids, _ in slot.batches for rid in ids]
            slot.batches.clear()
            lost = [self.pending.pop(rid)[0] for rid in held if rid in self.pending]
            self.counts["lost"] += len(lost)
            closing = self._closing
        for fut in lost:
            fut.set_exception(Lost(reason))
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(timeout=5)
        for conn in (slot.inbox, slot.outbox):
            with contextlib.suppress(OSError):
                conn.close()
        if closing:
            return
        if self.config.restart and self._started and not self.error:
            log.warning("%s; restarting it (%d request(s) it held answered as lost)", reason, len(lost))
            replacement = self._spawn(slot.rank)  # outside the lock: submit never waits for a process start
            with self._cond:
                self.counts["restarts"] += 1
                self.slots[slot.rank] = replacement
            return
        with self._cond:
            if self.error is None:
                self.error = reason
            self._cond.notify_all()
        log.error("%s; stopping the server", reason)
        threading.Thread(target=self._shutdown, args=(False,), daemon=True).start()

    def _describe_exit(self, slot: _Slot) -> str:
        slot.proc.join(timeout=1)
        return f"serve worker rank {slot.rank} (pid {slot.proc.pid}) died with exit code {slot.proc.exitcode}"

    def _check_workers(self) -> None:
        now = time.time()
        for slot in list(self.slots):
            if self._closing or slot.gone:
                continue
            beat, busy = self.status[2 * slot.rank], self.status[2 * slot.rank + 1]
            if not slot.proc.is_alive():
                self._lose(slot, self._describe_exit(slot))
            elif beat and now - beat > self.config.hang_timeout:
                self._lose(slot, f"serve worker rank {slot.rank} (pid {slot.proc.pid}) hung: no heartbeat for "
                                 f"{now - beat:.1f} s")
            elif busy and now - busy > self.config.hang_timeout:
                self._lose(slot, f"serve worker rank {slot.rank} (pid {slot.proc.pid}) hung: one batch running "
                                 f"for {now - busy:.1f} s")

    def _monitor(self) -> None:
        while not self._stop.wait(0.2):
            self._check_workers()

    # ------------------------------------------------------------------------------------ requests

    def submit(self, item: Any) -> Future:
        """Queue one request; a Future that resolves to its output. Raises `Refused` when the queue is full."""
        return self.submit_many([item])[0]

    def submit_many(self, items: list[Any]) -> list[Future]:
        """Queue all of `items` or none (`Refused` when the queue cannot take them all): one HTTP request
        with several inputs is accepted or refused as a whole."""
        if self.error:
            raise JobFailed(self.error)
        costs = [self.handler.cost(item) for item in items]
        futures = [Future() for _ in items]
        with self._cond:
            self.counts["submitted"] += len(items)
            if self._closing:
                self.counts["refused"] += len(items)
                raise Refused("the server is shutting down")
            if len(self.waiting) + len(items) > self.config.queue_size:
                self.counts["refused"] += len(items)
                raise Refused(f"queue full ({self.config.queue_size} waiting)")
            t = time.time()
            for fut, item, cost in zip(futures, items, costs, strict=True):
                rid = self._next_id
                self._next_id += 1
                self.pending[rid] = (fut, t)
                self.waiting.append((rid, t, item, cost))
            self._cond.notify_all()
        return futures

    def queue_depth(self) -> int:
        return len(self.waiting)

    def _free_slot(self) -> _Slot | None:
        free = [s for s in self.slots if s.ready and not s.gone and len(s.batches) < DEPTH]
        return min(free, key=lambda s: (len(s.batches), s.used)) if free else None

    def _filled(self) -> bool:
        cfg = self.config
        return len(self.waiting) >= cfg.max_batch or bool(
            cfg.max_batch_tokens and sum(w[3] for w in self.waiting) >= cfg.max_batch_tokens)

    def _share(self) -> int:
        """Most items for the next batch: the queue split evenly over the idle workers, so one worker
        does not take all waiting requests while another idles (benchmarks/results/serve_http.md was
        measured with this; its effect on p99 there was within run-to-run noise)."""
        idle = sum(1 for s in self.slots if s.ready and not s.gone and not s.batches)
        return max(1, min(self.config.max_batch, -(-len(self.waiting) // max(1, idle))))

    def _next_batch(self) -> tuple[_Slot, list] | None:
        """Wait for a free worker and a batch worth sending (full, or its oldest request waited
        `max_wait_ms`); take the batch off the queue and book it on that worker."""
        cfg = self.config
        with self._cond:
            while not self._stop.is_set():
                slot = self._free_slot()
                if slot is None or not self.waiting:
                    self._cond.wait(0.2)
                    continue
                wait = self.waiting[0][1] + cfg.max_wait_ms / 1000 - time.time()
                if wait > 0 and not self._filled():
                    self._cond.wait(wait)
                    continue
                chosen = pick_batch([w[3] for w in self.waiting], self._share(), cfg.max_batch_tokens)
                picked = set(chosen)
                batch = [self.waiting[i] for i in chosen]
                self.waiting = deque(w for i, w in enumerate(self.waiting) if i not in picked)
                slot.batches.append(([b[0] for b in batch], len(batch) * max(b[3] for b in batch)))
                slot.used = time.time()
                return slot, batch
        return None

    def _batch(self) -> None:
        """Form batches and hand each to a worker as one message."""
        while True:
            got = self._next_batch()
            if got is None:
                return
            slot, batch = got
            message = ([b[0] for b in batch], self.handler.collate([b[2] for b in batch]))
            try:
                slot.inbox.send(message)
            except (OSError, ValueError):  # the worker is gone: the monitor answers its requests as lost
                continue

    def _collect(self) -> None:
        """Take results (and readiness, failures) from every worker's pipe; a pipe that breaks is a dead worker."""
        while not self._stop.is_set():
            slots = {s.outbox: s for s in list(self.slots) if not s.gone}
            try:
                readable = wait_connections(list(slots), timeout=0.2) if slots else []
            except OSError:
                continue
            if not slots:
                time.sleep(0.05)
            for conn in readable:
                slot = slots[conn]
                try:
                    kind, ids, data = conn.recv()
                except Exception:  # noqa: BLE001 - EOF or a torn message: the worker is gone
                    if not self._closing:
                        self._lose(slot, self._describe_exit(slot))
                    continue
                self._handle(slot, kind, ids, data)

    def _handle(self, slot: _Slot, kind: str, ids: list[int], data: Any) -> None:
        if kind == "ready":
            with self._cond:
                slot.ready = True
                self._cond.notify_all()
            return
        if kind == "failed":
            with self._cond:
                self.error = self.error or f"serve worker rank {slot.rank} failed to load {self.ref}: {data}"
                self._cond.notify_all()
            self._lose(slot, self.error)
            return
        now = time.time()
        with self._cond:
            tokens = slot.batches.popleft()[1] if slot.batches and slot.batches[0][0] == ids else 0
            done = [(rid, self.pending.pop(rid)) for rid in ids if rid in self.pending]
            self.counts["answered" if kind == "done" else "failed"] += len(done)
            if kind == "done":
                self.latencies.extend(now - t for _, (_, t) in done)
            self._cond.notify_all()
        if kind == "done":
            out, seconds = data
            by_id = dict(zip(ids, out, strict=True))
            for rid, (fut, _) in done:
                fut.set_result(by_id[rid])
            if self.on_batch is not None:
                self.on_batch(len(ids), tokens, seconds)
        else:
            for _, (fut, _) in done:
                fut.set_exception(Failed(data))

    # ------------------------------------------------------------------------------------ accounting, stop

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ms = [s * 1000 for s in self.latencies]
            return {**self.counts, "in_flight": len(self.pending), "queued": len(self.waiting),
                    "p50_ms": percentile(ms, 50) if ms else None, "p99_ms": percentile(ms, 99) if ms else None}

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until every accepted request is answered (or the server failed)."""
        deadline = time.time() + timeout
        while self.pending and not self.error and time.time() < deadline:
            time.sleep(0.005)
        if self.error:
            raise JobFailed(f"{self.error}; {self.counts['lost']} accepted request(s) lost")

    def _shutdown(self, graceful: bool) -> None:
        with self._shutdown_lock:
            if not self._stop.is_set():
                self._stop_workers(graceful)

    def _stop_workers(self, graceful: bool) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if graceful and not self.error:
            for slot in self.slots:
                with contextlib.suppress(Exception):
                    slot.inbox.send(None)
            for slot in self.slots:
                slot.proc.join(timeout=10)
        for slot in self.slots:
            if slot.proc.is_alive():
                slot.proc.kill()
            slot.proc.join(timeout=5)
        self._stop.set()
        with self._cond:
            for fut, _ in self.pending.values():
                fut.set_exception(Lost(self.error or "server closed"))
            self.counts["lost"] += len(self.pending)
            self.pending.clear()
            self.waiting.clear()
        for slot in self.slots:
            for conn in (slot.inbox, slot.outbox):
                with contextlib.suppress(OSError):
                    conn.close()

    def close(self, timeout: float = 60.0) -> None:
        """Stop the workers (after the accepted requests, when healthy) and account for every request."""
        if not self._stop.is_set() and not self.error:
            with contextlib.suppress(JobFailed):
                self.drain(timeout=timeout)
        self._shutdown(graceful=True)  # waits for a shutdown the monitor may have started


def request_items(ref: str, n: int, seq_len: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """`n` single requests of random inputs shaped for the model (one image, or one token sequence)."""
    from .. import io
    from ..bench.inputs import example_inputs

    args, _ = example_inputs(io.load(ref), batch=n, seq_len=seq_len, seed=seed)
    return [tuple(a[i].numpy() for a in args) for i in range(n)]


def run_load(server: Server, items: list, duration: float, concurrency: int) -> dict[str, Any]:
    """Closed loop: keep `concurrency` requests in flight for `duration` seconds, cycling over `items`.
    Returns throughput (answered/s) and the server's counts and latency percentiles. The loop blocks on
    a semaphore that answers release, so the load generator itself costs almost no CPU."""
    slots = threading.Semaphore(concurrency)
    with server._lock:
        server.latencies.clear()  # percentiles of this load only (not of an earlier warm-up)
    i, t0 = 0, time.time()
    start_answered = server.counts["answered"]
    while time.time() - t0 < duration and not server.error:
        if not slots.acquire(timeout=0.1):
            continue
        try:
            fut = server.submit(items[i % len(items)])
        except Refused:
            slots.release()
            time.sleep(0.001)
            continue
        fut.add_done_callback(lambda _: slots.release())
        i += 1
    server.drain()
    wall = time.time() - t0
    return {"throughput": (server.counts["answered"] - start_answered) / wall, "seconds": wall, **server.stats()}


def choose_layout(cores: int | None = None) -> list[tuple[int, int]]:
    """Candidate N x T layouts that use every core once: (cores x 1), ..., (1 x cores)."""
    cores = cores or os.cpu_count() or 1
    return [(n, cores // n) for n in range(cores, 0, -1) if cores % n == 0]


def serve_benchmark(ref: str, config: ServeConfig, seq_len: int, duration: float, auto: bool = False,
                    probe_seconds: float = 3.0) -> dict[str, Any]:
    """Run the server under a saturating closed-loop load; with `auto`, first probe every N x T layout
    for `probe_seconds` and keep the fastest. Returns the measurement (and the probes)."""
    items = request_items(ref, 64, seq_len)
    concurrency = 2 * config.max_batch * config.nproc
    probes = []
    if auto:
        for n, t in choose_layout():
            cfg = ServeConfig(**{**config.__dict__, "nproc": n, "threads": t})
            with Server(ref, cfg) as s:
                run_load(s, items, 1.0, 2 * cfg.max_batch * n)  # warm-up
                r = run_load(s, items, probe_seconds, 2 * cfg.max_batch * n)
            probes.append({"nproc": n, "threads": t, "throughput": r["throughput"]})
        best = max(probes, key=lambda p: p["throughput"])
        config = ServeConfig(**{**config.__dict__, "nproc": best["nproc"], "threads": best["threads"]})
        concurrency = 2 * config.max_batch * config.nproc
    with Server(ref, config) as s:
        run_load(s, items, min(2.0, duration / 2), concurrency)  # warm-up
        result = run_load(s, items, duration, concurrency)
    return {"model": ref, "nproc": config.nproc, "threads": config.threads, "max_batch": config.max_batch,
            "max_wait_ms": config.max_wait_ms, "seq_len": seq_len, **result, "auto_probes": probes}
