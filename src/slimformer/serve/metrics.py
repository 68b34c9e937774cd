"""Prometheus metrics of one app, in its own registry (two apps in one process, as in tests, never
share counters): requests by route and status, request latency, batch sizes in items and padded
tokens, worker compute time per batch, and the live queue depth, in-flight count and worker state."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slimformer_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.inputs = Counter("slimformer_inputs", "inputs (texts, images) accepted, by route", ["route"], registry=r)
        self.latency = Histogram("slimformer_request_duration_seconds", "HTTP request latency, by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("slimformer_batch_size", "inputs per model batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("slimformer_batch_tokens", "padded tokens per model batch (items x longest)",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("slimformer_batch_duration_seconds", "worker compute time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)

    def gauges(self, queue_depth: Callable[[], float], in_flight: Callable[[], float],
               workers_ready: Callable[[], float], restarts: Callable[[], float]) -> None:
        """Live values read at scrape time from the server (nothing to keep in step)."""
        for name, text, fn in (("slimformer_queue_depth", "inputs waiting for a batch", queue_depth),
                               ("slimformer_in_flight", "inputs accepted and not yet answered", in_flight),
                               ("slimformer_workers_ready", "worker processes loaded and serving", workers_ready),
                               ("slimformer_worker_restarts", "workers replaced after dying or hanging", restarts)):
            Gauge(name, text, registry=self.registry).set_function(fn)

    def observe_batch(self, items: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(items)
        if tokens:
            self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
