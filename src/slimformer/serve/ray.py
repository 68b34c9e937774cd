"""`slimformer serve MODEL --ray --replicas K`: the same app as a Ray Serve deployment.

Each replica is one `Service` (its own front end, batching and worker processes) behind Ray Serve's
HTTP proxy, which spreads requests over the replicas. Users who outgrow one machine start a Ray
cluster (`ray start --head`, then `ray start --address HEAD:6379` on each new node, and
`RAY_ADDRESS=HEAD:6379` here) and raise `--replicas`: no new code. Optional extra:
`pip install 'slimformer[ray]'`.
"""

from __future__ import annotations

import os
import signal
import threading

from ..errors import SlimformerError
from .app import ServeOptions, Service, build_app


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise SlimformerError("--ray needs Ray Serve: pip install 'slimformer[ray]'") from None


def deployment(ref: str, options: ServeOptions, replicas: int):
    """A bound Ray Serve application: `replicas` copies of the app, each reserving its workers' threads."""
    from ray import serve

    def build():  # runs on each replica, so every replica loads its own workers
        return build_app(Service(ref, options))

    cpus = options.workers * options.server_config().threads
    cls = serve.ingress(build)()
    return serve.deployment(name="slimformer", num_replicas=replicas, ray_actor_options={"num_cpus": cpus})(cls).bind()


def serve_ray(ref: str, options: ServeOptions, host: str, port: int, replicas: int) -> int:
    """Start (or join, with RAY_ADDRESS) a Ray cluster, deploy, serve until SIGTERM / SIGINT; exit code 0."""
    import ray
    from ray import serve

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise SlimformerError(f"--replicas must be an integer >= 1, got {replicas!r}")
    address = os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"_node_ip_address": host if host in ("127.0.0.1", "localhost") else None}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    stop = threading.Event()  # after ray.init, which installs a SIGTERM handler that aborts the process
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(ref, options, replicas), name="slimformer", route_prefix="/", blocking=False)
        stop.wait()
        serve.shutdown()  # Ray drains each replica; their lifespans stop the workers
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
