"""The ASGI app: routes every model gets (`/health`, `/info`, `/metrics`), the routes of its kind, the
JSON error contract, and the bridge from a request to `parallel.serve.Server` (submit all of a
request's inputs at once, await their futures on the event loop).

Every accepted request is answered exactly once: with its outputs, or 429 (queue full, nothing
queued), 503 (its worker died: the worker is restarted, the server stays up) or 500 (the model
raised). Workers load in the background, so `/health` answers 503 until they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from torch import nn

from .. import io
from ..errors import SlimformerError
from ..parallel.launch import JobFailed
from ..parallel.serve import Lost, Refused, ServeConfig, Server
from .http import HTTPError
from .images import ImageClassifier
from .kinds import Kind, Limits
from .metrics import Metrics
from .speech import SpeechRecognizer
from .text import TextEncoder
from .translate import Translator

log = logging.getLogger(__name__)

KINDS: tuple[type[Kind], ...] = (TextEncoder, ImageClassifier, SpeechRecognizer, Translator)
RETRY_AFTER_S = 1


@dataclass
class ServeOptions:
    """What `slimformer serve` takes besides the model (defaults are the CLI's)."""

    workers: int = 1
    threads: int = 0  # 0: the cores divided among the workers
    max_batch_tokens: int = 16384
    max_batch: int = 64
    max_queue: int = 512
    max_inputs: int = 32
    max_wait_ms: float = 2.0
    hang_timeout: float = 60.0
    name: str = ""
    recipe: list[dict] = field(default_factory=list)

    def server_config(self) -> ServeConfig:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise SlimformerError(f"--workers must be an integer >= 1, got {self.workers!r}")
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        if self.max_inputs > self.max_queue:
            raise SlimformerError(f"--max-inputs {self.max_inputs} exceeds --max-queue {self.max_queue}: such a "
                                  "request could never be queued")
        return ServeConfig(nproc=self.workers, threads=threads, max_batch=self.max_batch,
                           max_wait_ms=self.max_wait_ms, queue_size=self.max_queue, hang_timeout=self.hang_timeout,
                           max_batch_tokens=self.max_batch_tokens, restart=True, flags=("--workers", "--max-queue"))


def kind_for(ref: str, model: nn.Module, limits: Limits) -> Kind:
    for cls in KINDS:
        if cls.matches(model):
            return cls(ref, model, limits)
    raise SlimformerError(f"{ref}: no HTTP routes for model class {type(model).__name__}; served kinds: "
                          f"{', '.join(k.name for k in KINDS)}")


class Service:
    """One served model: its kind, the worker `Server`, the metrics; what every route calls into."""

    def __init__(self, ref: str, options: ServeOptions, model: nn.Module | None = None):
        self.ref, self.options = str(ref), options
        self.config = options.server_config()
        self.config.validate()
        model = model if model is not None else io.load(ref)
        self.kind = kind_for(self.ref, model, Limits(max_inputs=options.max_inputs,
                                                     max_batch_tokens=options.max_batch_tokens))
        self.name = options.name or Path(self.ref).name or self.ref
        self.metrics = Metrics()
        self.server = Server(self.ref, self.config, self.kind.handler, on_batch=self.metrics.observe_batch)
        self.metrics.gauges(queue_depth=self.server.queue_depth, in_flight=lambda: len(self.server.pending),
                            workers_ready=lambda: sum(s.ready for s in self.server.slots),
                            restarts=lambda: self.server.counts["restarts"])
        self.failure: str | None = None

    # ------------------------------------------------------------------------------------ requests

    async def infer(self, route: str, items: list[Any]) -> list[Any]:
        """Outputs for all of a request's inputs, or the HTTP error that answers the request."""
        if not self.server.accepting():
            raise HTTPError(503, self.failure or self.server.error or self.state(),
                            headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            futures = self.server.submit_many(items)
        except Refused as e:
            raise HTTPError(429, f"{e}; retry after {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)}) \
                from None
        except JobFailed as e:
            raise HTTPError(503, str(e)) from None
        self.metrics.inputs.labels(route).inc(len(items))
        outputs = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        for e in outputs:  # every future is awaited, so no failure goes unretrieved
            if isinstance(e, Lost):
                raise HTTPError(503, f"worker lost while answering this request ({e}); it is being restarted, "
                                     "retry", headers={"Retry-After": str(RETRY_AFTER_S)})
            if isinstance(e, BaseException):
                raise HTTPError(500, f"the model failed on this batch: {e}")
        return list(outputs)

    async def answer(self, route: str, request: Request,
                     handler: Callable[[Service, Request], Awaitable[Response]]) -> Response:
        """Run a route's handler; every outcome is counted and timed, every error is the JSON contract."""
        t = time.perf_counter()
        try:
            response = await handler(self, request)
        except HTTPError as e:
            response = e.response()
        except Exception as e:  # a bug, not the client's fault: still the JSON contract, and logged
            log.exception("%s failed", route)
            response = HTTPError(500, f"internal error: {type(e).__name__}: {e}").response()
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - t)
        return response

    # ------------------------------------------------------------------------------------ common routes

    async def health(self, request: Request) -> Response:
        if self.server.ready():
            return JSONResponse({"status": "ok"})
        return HTTPError(503, self.failure or self.server.error or self.state()).response()

    def state(self) -> str:
        """Why the server is not answering, when it is not (for 503 bodies)."""
        if self.server._closing:
            return "shutting down"
        loading = sum(not s.ready for s in self.server.slots)
        return f"{loading} of {len(self.server.slots) or self.config.nproc} worker(s) still loading"

    async def info(self, request: Request) -> Response:
        from ..bench.env import cpu_flags, cpu_model

        workers = [{"rank": s.rank, "pid": s.proc.pid, "ready": s.ready} for s in self.server.slots]
        return JSONResponse({"model": self.name, "ref": self.ref, "kind": self.kind.name, "pid": os.getpid(),
                             "recipe": self.options.recipe, "versions": io.versions(),
                             "cpu": {"model": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count()},
                             "workers": workers, "threads_per_worker": self.config.threads,
                             "restarts": self.server.counts["restarts"], **self.kind.info()})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Load the workers in the background; a failure is logged, reported by /health, and
        handed to `on_failure` (the runner stops the server)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.server.start)
        except (JobFailed, SlimformerError) as e:
            self.failure = str(e)
            log.error("serving %s failed: %s", self.ref, e)
            if on_failure is not None:
                on_failure(self.failure)

    async def stop(self) -> None:
        """After uvicorn has answered the in-flight requests: drain what is queued, stop the workers."""
        await asyncio.get_running_loop().run_in_executor(None, self.server.close)


def build_app(service: Service, on_failure: Callable[[str], None] | None = None) -> Starlette:
    async def not_found(request: Request, exc: HTTPException) -> Response:
        return HTTPError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        starting = asyncio.create_task(service.start(on_failure))
        yield
        await starting
        await service.stop()

    routes = [Route("/health", service.health), Route("/info", service.info),
              Route("/metrics", service.prometheus), *service.kind.routes(service)]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
