"""Multi-process batched inference: N worker processes x T intra-op threads behind one bounded queue.

Why processes: on a CPU, one process with T threads splits every matmul T ways and synchronizes T
threads per op; N independent processes each run whole batches with no synchronization at all, which
wins for the small matmuls of small models.

Why batching happens in the front end: a request crosses a process boundary as a pickled message, and
for a small model the per-message cost (lock, pipe write, unpickle) is a sizable fraction of the
per-item compute. So `submit` only puts the request on an in-process queue; one batcher thread takes
the first waiting request, then more until it has `max_batch` or the first has waited `max_wait_ms`,
stacks them and sends the whole batch as one message. At most one batch per worker waits in the
process queue; while all workers are busy the batcher is blocked and requests gather for the next,
full batch, so batches grow with load on their own.

The request queue is *bounded*: when it is full `submit` refuses at once (counted in `refused`)
instead of letting the queue and every request's latency grow without limit. Every accepted request
ends as `answered` or, if the server goes down with it, `lost`; `submitted = answered + refused + lost
+ failed` always holds. A worker that dies or stops beating is named in the error that stops the server.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bench.timing import percentile
from ..errors import SlimformerError
from .common import check_positive
from .launch import JobFailed

log = logging.getLogger(__name__)


class Refused(Exception):
    """The bounded request queue is full: retry later (HTTP would say 503)."""


class Lost(Exception):
    """The server stopped (a worker died or hung) before this accepted request was answered."""


@dataclass
class ServeConfig:
    nproc: int = 2
    threads: int = 1
    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue_size: int = 256
    hang_timeout: float = 20.0  # a batch running longer than this, or a silent worker, stops the server

    def validate(self) -> None:
        check_positive("--nproc", self.nproc)
        check_positive("--threads", self.threads)
        check_positive("--max-batch", self.max_batch)
        check_positive("--queue-size", self.queue_size)
        if self.max_wait_ms < 0:
            raise SlimformerError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        cores = os.cpu_count() or 1
        if self.nproc * self.threads > 4 * cores:
            raise SlimformerError(f"--nproc {self.nproc} x --threads {self.threads} = {self.nproc * self.threads} "
                                  f"threads on {cores} cores: at most {4 * cores} (oversubscription only slows it)")


def _worker(rank: int, ref: str, threads: int, requests, results, status, ready) -> None:
    """One serving process: load the model, then answer batches until it gets None."""
    import torch

    from .. import io
    from .common import output_of

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = io.load(ref).eval()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.5):
            status[2 * rank] = time.time()

    status[2 * rank] = time.time()
    threading.Thread(target=beat, daemon=True).start()
    ready.put(rank)
    while True:
        batch = requests.get()
        if batch is None:
            break
        ids, arrays = batch
        status[2 * rank + 1] = time.time()
        with torch.inference_mode():
            out = output_of(model, tuple(torch.from_numpy(a) for a in arrays)).numpy()
        status[2 * rank + 1] = 0.0
        results.put((ids, out))
    stop.set()


class Server:
    """Start with `with Server(ref, config) as s:`; `s.submit(item)` returns a Future of the output.

    `item` is one request's model inputs without the batch dimension, as numpy arrays (e.g. one image
    `[C, H, W]`, or token ids `[T]` and a mask `[T]`). `stats()` gives the counts and latencies.
    """

    def __init__(self, ref: str, config: ServeConfig):
        config.validate()
        self.ref, self.config = ref, config
        self._ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        self.incoming: queue.Queue = queue.Queue(maxsize=config.queue_size)  # requests not yet batched
        self.requests = self._ctx.Queue(maxsize=config.nproc)  # batches: at most one waiting per worker
        self.results = self._ctx.Queue()
        self.status = self._ctx.Array("d", 2 * config.nproc, lock=False)  # per rank: heartbeat, busy-since
        self.procs: list = []
        self.pending: dict[int, tuple[Future, float]] = {}
        self.latencies: list[float] = []
        self.counts = {"submitted": 0, "answered": 0, "refused": 0, "lost": 0, "failed": 0}
        self.error: str | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._stop = threading.Event()
        self._shutdown_lock = threading.Lock()  # the monitor and close() may both shut down: one at a time
        self._closing = False  # set before workers are told to exit, so their exit is not a fault

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, timeout: float = 120.0) -> None:
        ready = self._ctx.Queue()
        for rank in range(self.config.nproc):
            p = self._ctx.Process(target=_worker, name=f"slimformer-serve-{rank}", daemon=True,
                                  args=(rank, self.ref, self.config.threads, self.requests,
                                        self.results, self.status, ready))
            p.start()
            self.procs.append(p)
        deadline = time.time() + timeout
        for _ in self.procs:
            while True:
                try:
                    ready.get(timeout=0.5)
                    break
                except queue.Empty:
                    self._check_workers()
                    if self.error or time.time() > deadline:
                        self.close()
                        raise JobFailed(self.error or f"serve workers not ready within {timeout:.0f} s") from None
        threading.Thread(target=self._batch, daemon=True, name="serve-batcher").start()
        threading.Thread(target=self._collect, daemon=True, name="serve-results").start()
        threading.Thread(target=self._monitor, daemon=True, name="serve-monitor").start()

    def submit(self, item: tuple[np.ndarray, ...]) -> Future:
        """Queue one request; a Future that resolves to its output. Raises `Refused` when the queue is full."""
        if self.error:
            raise JobFailed(self.error)
        fut: Future = Future()
        with self._lock:
            self.counts["submitted"] += 1
            rid = self._next_id
            self._next_id += 1
            t = time.time()
            self.pending[rid] = (fut, t)
        try:
            self.incoming.put_nowait((rid, t, item))
        except queue.Full:
            with self._lock:
                del self.pending[rid]
                self.counts["refused"] += 1
            raise Refused(f"queue full ({self.config.queue_size} waiting)") from None
        return fut

    def _batch(self) -> None:
        """Form batches from `incoming` and hand each to the workers as one message."""
        cfg = self.config
        while not self._stop.is_set():
            try:
                first = self.incoming.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = first[1] + cfg.max_wait_ms / 1000
            while len(batch) < cfg.max_batch:
                try:
                    batch.append(self.incoming.get(timeout=max(0.0, deadline - time.time())))
                except queue.Empty:
                    break
            message = ([r[0] for r in batch], [np.stack([r[2][i] for r in batch]) for i in range(len(first[2]))])
            while not self._stop.is_set():
                try:
                    self.requests.put(message, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                ids, out = self.results.get(timeout=0.2)
            except (queue.Empty, OSError, EOFError):
                continue
            now = time.time()
            with self._lock:
                done = [self.pending.pop(rid) for rid in ids]
                self.counts["answered"] += len(ids)
                self.latencies.extend(now - t for _, t in done)
            for (fut, _), o in zip(done, out, strict=True):
                fut.set_result(o)

    def _check_workers(self) -> None:
        now = time.time()
        for rank, p in enumerate(self.procs):
            if self._closing:
                return
            if not p.is_alive() and self.error is None:
                self.error = f"serve worker rank {rank} (pid {p.pid}) died with exit code {p.exitcode}"
            beat, busy = self.status[2 * rank], self.status[2 * rank + 1]
            if beat and now - beat > self.config.hang_timeout and self.error is None:
                self.error = f"serve worker rank {rank} (pid {p.pid}) hung: no heartbeat for {now - beat:.1f} s"
            if busy and now - busy > self.config.hang_timeout and self.error is None:
                self.error = f"serve worker rank {rank} (pid {p.pid}) hung: one batch running for {now - busy:.1f} s"

    def _monitor(self) -> None:
        while not self._stop.wait(0.2):
            self._check_workers()
            if self.error:
                log.error("%s; stopping the server", self.error)
                self._shutdown(graceful=False)
                return

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ms = [s * 1000 for s in self.latencies]
            return {**self.counts, "in_flight": len(self.pending),
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
        self._closing = True
        if graceful and not self.error:
            for _ in self.procs:
                with contextlib.suppress(Exception):
                    self.requests.put(None, timeout=5)
            for p in self.procs:
                p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
        self._stop.set()
        with self._lock:
            for fut, _ in self.pending.values():
                fut.set_exception(Lost(self.error or "server closed"))
            self.counts["lost"] += len(self.pending)
            self.pending.clear()

    def close(self) -> None:
        """Stop the workers (after the queued requests when healthy) and account for every request."""
        if not self._stop.is_set() and not self.error:
            with contextlib.suppress(JobFailed):
                self.drain(timeout=60.0)
        self._shutdown(graceful=True)  # waits for a shutdown the monitor may have started
        for q in (self.requests, self.results):
            q.cancel_join_thread()
            q.close()


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
