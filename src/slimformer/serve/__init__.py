"""`slimformer serve`: a compressed (or plain) model over HTTP, on uvicorn + starlette.

- `app`: the ASGI app: routes shared by every model (`/health`, `/info`, `/metrics`) plus the routes of
  the model's kind, error bodies, request accounting.
- `kinds`: what kind of model this is and which routes it gets (the extension point: a translator or a
  speech model adds a `Kind` there).
- `text` (OpenAI `/v1/embeddings`, TEI `/embed`) and `images` (`/v1/classify`): one module per kind.
- `http`: the JSON error body and the request-field checks every route shares.
- `metrics`: Prometheus counters and histograms, one registry per app.
- `run`: uvicorn with a graceful SIGTERM (stop accepting, drain, exit 0).

Batching, worker processes and crash handling are `parallel.serve.Server`'s, the same implementation
the in-process benchmark harness runs: each kind only brings its `Handler`.
"""
