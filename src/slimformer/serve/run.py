"""Run a `Service` on uvicorn until SIGTERM / SIGINT.

uvicorn's own graceful shutdown is the drain: it stops accepting connections, waits for the requests
in flight to be answered, then the app's lifespan ends, which lets the workers finish what is queued
and stops them. The workers ignore SIGTERM themselves (a TERM sent to the whole process group must
not cut their batches short); they end when the front end tells them or their pipe closes.
"""

from __future__ import annotations

import errno
import signal
import socket

import torch
import uvicorn

from ..errors import SlimformerError
from .app import Service, build_app

DRAIN_TIMEOUT_S = 30


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be bound, before any worker starts (uvicorn would exit after loading)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SlimformerError(f"--port must be an integer in [0, 65535], got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise SlimformerError(f"--host {host} --port {port} {why}") from None


def _ignore(signum, frame) -> None:
    """uvicorn re-raises the signal that stopped it once its graceful shutdown is done (so a default
    handler would end the process by that signal); after a complete drain we exit 0 instead."""


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, drain_timeout: float = DRAIN_TIMEOUT_S) -> int:
    """Serve until stopped; the exit code: 0 after a drain, 1 when the workers could not start."""
    check_port(host, port)
    torch.set_num_threads(1)  # this process parses and tokenizes; the cores are the workers'
    failures: list[str] = []
    config = uvicorn.Config(None, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=drain_timeout)
    server = uvicorn.Server(config)

    def on_failure(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    config.app = build_app(service, on_failure)
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if failures or not server.started else 0
