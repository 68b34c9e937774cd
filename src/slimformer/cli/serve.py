"""`slimformer serve MODEL`: the model over HTTP (OpenAI / TEI-compatible embeddings, image classes, OpenAI
audio transcriptions for Whisper, translations for seq2seq translators).

Everything a user can get wrong (model, recipe, limits, a port in use) is refused here with one line,
before any worker process starts. With `--recipe` the model is compressed once into a temporary model
dir that the workers load, so each worker does not repeat the (possibly calibrated) compression.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import typer

from .app import app


def default_workers() -> int:
    """One single-thread worker per core (up to 4): on a CPU, independent processes beat one process whose
    every op waits for all its threads, and a descheduled thread stalls that op for everyone
    (benchmarks/results/serve_http.md: 1 worker x 2 threads was the slowest layout)."""
    return max(1, min(4, os.cpu_count() or 1))


@app.command()
def serve(
    model: str = typer.Argument(..., help="model dir, Hugging Face dir or built-in name (e.g. minilm)"),
    recipe: str = typer.Option(None, "--recipe", help="compress first with this recipe (YAML file or inline)"),
    task: str = typer.Option(None, "--task", help="task whose data calibrates the recipe (e.g. embedding)"),
    workers: int = typer.Option(None, "--workers",
                                help="model worker processes (default: one per core, at most 4, 1 thread each)"),
    threads: int = typer.Option(None, "--threads", help="intra-op threads per worker (default: cores / workers)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    max_batch_tokens: int = typer.Option(16384, "--max-batch-tokens",
                                         help="padded tokens per batch (inputs x longest); similar lengths batch"),
    max_batch: int = typer.Option(64, "--max-batch", help="most inputs in one batch"),
    max_queue: int = typer.Option(512, "--max-queue", help="inputs waiting at most; beyond, requests get 429"),
    max_inputs: int = typer.Option(32, "--max-inputs", help="inputs per request at most (413 beyond)"),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", help="longest an input waits for its batch to fill"),
    name: str = typer.Option(None, "--name", help="model name in responses (default: the model dir's name)"),
    ray: bool = typer.Option(False, "--ray", help="serve as a Ray Serve deployment (extra: slimformer[ray])"),
    replicas: int = typer.Option(2, "--replicas", help="with --ray: copies of the app, each with its workers"),
) -> None:
    """Serve MODEL over HTTP until SIGTERM or Ctrl-C (in-flight requests are answered first).

    Text encoders: POST /v1/embeddings (OpenAI) and POST /embed (TEI). Image classifiers: POST /v1/classify
    (JSON array or PNG/JPEG upload). Whisper: POST /v1/audio/transcriptions (OpenAI, multipart `file`).
    Seq2seq translators: POST /v1/translate. All: GET /health, /info, /metrics (Prometheus). With --ray, Ray
    Serve runs --replicas copies of the app (set RAY_ADDRESS to join a Ray cluster).

    Example: slimformer serve minilm --recipe recipes/minilm-fast.yaml --task embedding --port 8000

    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' -d '{"input": "Hello", "model": "minilm"}'

    slimformer serve whisper-tiny-en --recipe recipes/whisper-fast.yaml  then
    curl -s localhost:8000/v1/audio/transcriptions -F file=@clip.wav -F model=whisper-tiny-en
    """
    from .. import api
    from ..errors import SlimformerError
    from ..guard import check_threads
    from ..serve.app import ServeOptions, Service
    from ..serve.run import check_port
    from ..serve.run import serve as run

    if threads is not None:
        check_threads(threads)
    check_port(host, port)
    if ray:
        from ..serve.ray import require_ray

        require_ray()
        if replicas < 1:
            raise SlimformerError(f"--replicas must be >= 1, got {replicas}")
    options = ServeOptions(workers=default_workers() if workers is None else workers, threads=threads or 0,
                           max_batch_tokens=max_batch_tokens, max_batch=max_batch, max_queue=max_queue,
                           max_inputs=max_inputs, max_wait_ms=max_wait_ms,
                           name=name or ("minilm" if model == "minilm" else ""))
    options.server_config().validate()
    with tempfile.TemporaryDirectory(prefix="slimformer-serve-") as tmp:
        ref = model
        if recipe:
            ref = str(Path(tmp) / (Path(model).name or "model"))
            api.compress(model, recipe, out=ref, task=task)
            options.recipe = api.recipe_of(ref)
            options.name = options.name or Path(model).name
        else:
            options.recipe = api.recipe_of(model)
        service = Service(ref, options)  # the model, its kind and every limit checked here, before any worker
        copies = f"{replicas} Ray Serve replica(s) x " if ray else ""
        print(f"serving {service.name} ({service.kind.name}) on http://{host}:{port} with {copies}"
              f"{service.config.nproc} worker(s) x {service.config.threads} thread(s); GET /health says when ready",
              file=sys.stderr)
        if ray:
            from ..serve.ray import serve_ray

            code = serve_ray(ref, options, host, port, replicas)
        else:
            code = run(service, host, port)
    if code:
        raise typer.Exit(code)
