"""Embeddings over HTTP on loopback: `slimformer serve` (fp32 and a compressed recipe) against the peers a
user would pick for the same MiniLM, every server measured in one run, round-robin per concurrency.

Load: an async closed loop (httpx) keeps C requests in flight for a fixed time at C = 1 / 8 / 32 / 128;
each request is one real verse (World English Bible, the embedding task's text, natural lengths) to
the OpenAI route `POST /v1/embeddings`. Per server and C: answered requests/s, p50 / p99 latency, errors.
Then 10x overload (C = 320) on each server: how many answers were 200, 429 (shed), other errors.

Peers (each its own process on 127.0.0.1, started by this script):
- `sentence-transformers + FastAPI`: `SentenceTransformer(model_dir).encode([text], normalize_embeddings=True)`
  in a plain sync FastAPI endpoint on uvicorn, one process, torch on all cores: what a tutorial deploys.
- Infinity (`infinity_emb v2`, torch engine, CPU, offline on the same model dir), when a venv holding it is
  given with `--infinity-venv` (infinity-emb pins older numpy / typer / uvicorn than slimformer's, so it
  cannot share slimformer's venv).

The load generator shares the 2 cores with the server it measures (the same for every server).
Run the full version under the CPU lock:
`flock /tmp/slimformer-bench.lock .venv/bin/python benchmarks/serve_http.py --infinity-venv /tmp/inf-venv`
(`--tiny`: a tiny random BERT, short, for the test suite). Writes results/serve_http.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from slimformer import atomic
from slimformer.bench.env import environment
from slimformer.bench.timing import percentile
from slimformer.cpu import cpu_features, cpu_kind

log = logging.getLogger("benchmarks.serve_http")
RESULTS = Path(__file__).parent / "results"
# the served compressed recipe by CPU kind (eager: a compile per batch shape does not pay when serving)
INT8_STATIC = "bf16-attention+int8:activations=static,smoothing=0.75"
SERVE_RECIPE = {"amx": "bf16", "avx512-vnni": INT8_STATIC}
ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Peer:
    """One HTTP server under test: how it was started and configured, said in the report."""

    name: str
    command: list[str]
    config: str
    port: int
    path: str = "/v1/embeddings"
    proc: subprocess.Popen | None = None
    log_file: Path | None = None
    results: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, logs: Path) -> None:
        self.log_file = logs / f"{self.name.replace(' ', '_').replace('+', '')}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
               "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(self.command, stdout=self.log_file.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait(self, seconds: float) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        return False

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.poll() if self.proc else None


async def closed_loop(peer: Peer, texts: list[str], concurrency: int, seconds: float) -> dict:
    """`concurrency` requests in flight for `seconds`; latencies of the answered ones, errors by kind."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counter = [0]
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=peer.base, timeout=60, limits=limits) as client:
        async def user() -> None:
            while time.perf_counter() < stop:
                text = texts[counter[0] % len(texts)]
                counter[0] += 1
                t = time.perf_counter()
                try:
                    r = await client.post(peer.path, json={"input": text, "model": "minilm"})
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                if key == "200":
                    latencies.append(time.perf_counter() - t)
                elif key == "429":
                    await asyncio.sleep(0.01)  # a shed request is retried by the next iteration
                statuses[key] = statuses.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    return {"concurrency": concurrency, "seconds": wall, "answered": len(latencies),
            "throughput": len(latencies) / wall, "p50_ms": percentile(ms, 50) if ms else None,
            "p99_ms": percentile(ms, 99) if ms else None, "statuses": statuses,
            "errors": sum(n for k, n in statuses.items() if k != "200")}


def fidelity(peer: Peer, texts: list[str], reference: np.ndarray) -> float:
    """Mean cosine of the peer's embeddings to slimformer.embed on the fp32 model (one request each)."""
    got = []
    for text in texts:
        r = httpx.post(f"{peer.base}{peer.path}", json={"input": text, "model": "minilm"}, timeout=60)
        r.raise_for_status()
        got.append(r.json()["data"][0]["embedding"])
    got = np.array(got, dtype=np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    return float((got * reference).sum(1).mean())


# ------------------------------------------------------------------------------------ the FastAPI peer

def run_fastapi_peer(model_dir: str, port: int) -> None:
    """The sentence-transformers peer: one sync FastAPI endpoint calling `encode` per request."""
    import torch
    import uvicorn
    from fastapi import Body, FastAPI
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: dict = Body(...)) -> dict:  # noqa: B008 - FastAPI's way to take the JSON body
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------ the run

def tiny_model(out: Path) -> str:
    """A tiny random BERT with MiniLM's tokenizer (for --tiny)."""
    import torch
    from transformers import BertConfig, BertModel

    from slimformer.tasks.embedding import tokenizer

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    BertModel(cfg).eval().save_pretrained(out, safe_serialization=True)
    tokenizer().save_pretrained(out)
    return str(out)


def peers(a: argparse.Namespace, model: str, model_dir: str) -> list[Peer]:
    py = sys.executable
    serve = [py, "-m", "slimformer", "serve", model, "--name", "minilm"]
    out = []
    for workers, threads in a.layouts:
        port = free_port()
        out.append(Peer(f"slimformer fp32 {workers}x{threads}",
                        [*serve, "--port", str(port), "--workers", str(workers), "--threads", str(threads)],
                        f"`slimformer serve {Path(model).name} --workers {workers} --threads {threads}` (defaults: "
                        "--max-batch-tokens 16384, --max-wait-ms 2)", port))
    if a.recipe:
        workers, threads = a.layouts[0]
        port = free_port()
        short = "+".join(part.split(":")[0] for part in a.recipe.split("+"))
        out.append(Peer(f"slimformer {short} {workers}x{threads}",
                        [*serve, "--port", str(port), "--workers", str(workers), "--threads", str(threads),
                         "--recipe", a.recipe, "--task", "embedding"],
                        f"`slimformer serve minilm --recipe {a.recipe} --task embedding --workers {workers} "
                        f"--threads {threads}`", port))
    if importlib.util.find_spec("fastapi") is None:
        a.notes.append("The sentence-transformers + FastAPI peer was not measured: fastapi is not installed "
                       "(pip install fastapi, or the [test] extra).")
    else:
        port = free_port()
        out.append(Peer("sentence-transformers + FastAPI",
                        [py, __file__, "--fastapi-peer", model_dir, "--port", str(port)],
                        "sentence-transformers `SentenceTransformer(dir).encode(texts, normalize_embeddings=True)` in "
                        f"a sync FastAPI endpoint, uvicorn, 1 process, torch {os.cpu_count()} threads", port))
    if a.infinity_venv:
        port = free_port()
        exe = str(Path(a.infinity_venv) / "bin" / "infinity_emb")
        out.append(Peer("infinity", [exe, "v2", "--model-id", model_dir, "--host", "127.0.0.1", "--port", str(port),
                                     "--engine", "torch", "--device", "cpu", "--served-model-name", "minilm"],
                        "Infinity 0.0.78 `infinity_emb v2 --model-id DIR --engine torch --device cpu` (its defaults: "
                        "batch size 32, dynamic batching; its own venv, same torch 2.13)", port, path="/embeddings"))
    return out


def markdown(report: dict, env: dict) -> str:
    lines = ["# Embeddings over HTTP (CPU, loopback)", "",
             f"{env['cpu']} ({', '.join(env['cpu_flags'])}), {env['cores']} cores, "
             f"torch {env['versions'].get('torch')}; "
             f"one run of `benchmarks/serve_http.py{' --tiny' if report['tiny'] else ''}`; model "
             f"{report['model']}; {report['seconds']:.0f} s per cell, servers round-robin per concurrency. Texts: "
             f"{report['texts']['n']} real verses, {report['texts']['tokens_p50']:.0f} tokens median "
             f"({report['texts']['tokens_min']}-{report['texts']['tokens_max']}), one per request. The async "
             "load generator (httpx) runs on the same 2 cores. Load average (1 min) "
             f"{report['load_average_start'][0]:.1f} at the start, before any server started, and "
             f"{report['load_average_end'][0]:.1f} at the end, which counts this benchmark's own servers and "
             "load generator (about 3-4 runnable threads while a cell runs).", "",
             "| server | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    before = report["load_average_start"][0]
    if before > 1.0:  # at the start nothing of ours runs yet: this load is other work sharing the CPU
        lines[2:2] = [f"**Other work was running when this run began (load average {before:.1f} on "
                      f"{env['cores']} cores): the numbers below shared the CPU with it; rerun on a quiet machine "
                      "before drawing conclusions.**", ""]
    for p in report["peers"]:
        for r in p.get("loads", []):
            p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "-"
            p99 = f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"
            lines.append(f"| {p['name']} | {r['concurrency']} | {r['throughput']:.1f} | {p50} | {p99} | "
                         f"{r['errors']} |")
    ratios = report.get("ratios_c32", {})
    if ratios:
        lines += ["", f"At concurrency 32, against the best peer ({ratios['best_peer']}: "
                      f"{ratios['best_peer_rps']:.1f} req/s, p99 {ratios['best_peer_p99_ms']:.1f} ms):", ""]
        for name, r in ratios["slimformer"].items():
            lines.append(f"- {name}: **{r['throughput_ratio']:.2f}x** req/s, p99 {r['p99_ms']:.1f} ms "
                         f"({'<=' if r['p99_ms'] <= ratios['best_peer_p99_ms'] else '>'} the peer's)")
    lines += ["", f"## 10x overload (concurrency {report['overload_concurrency']})", "",
              "| server | answered 200 | 429 shed | other | statuses |",
              "|---|---|---|---|---|"]
    for p in report["peers"]:
        o = p.get("overload")
        if o:
            other = sum(n for k, n in o["statuses"].items() if k not in ("200", "429"))
            lines.append(f"| {p['name']} | {o['statuses'].get('200', 0)} | {o['statuses'].get('429', 0)} | {other} | "
                         f"{json.dumps(o['statuses'])} |")
    lines += ["", "## Servers", "", "| server | configuration | cosine to fp32 `slimformer.embed` |", "|---|---|---|"]
    for p in report["peers"]:
        cos = f"{p['cosine']:.4f}" if p.get("cosine") is not None else "-"
        lines.append(f"| {p['name']} | {p['config']} | {cos} |")
    for note in report["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random model, short cells: checks the code paths")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--infinity-venv", default=None, help="a venv holding infinity-emb[server,torch]")
    p.add_argument("--recipe", default=None,
                   help="the compressed variant (calibrated on the embedding task). Default by CPU kind: eager "
                        "bf16 where AMX is (0.32x fp32 latency at batch 16 there), else recipes/minilm-fast.yaml "
                        "without its compile; never compiled: serving sees dozens of batch shapes, each a compile")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fastapi-peer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.recipe is None:
        a.recipe = SERVE_RECIPE.get(cpu_kind(cpu_features()), INT8_STATIC)
    if a.fastapi_peer:
        return run_fastapi_peer(a.fastapi_peer, a.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from slimformer import embed
    from slimformer.models.hf import minilm_dir
    from slimformer.tasks.embedding import sentences, tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="serve-http-bench-"))
    if a.tiny:
        model = model_dir = tiny_model(tmp / "tiny-bert")
        a.recipe, a.seconds, concurrencies, a.layouts, overload = None, 1.0, (1, 8), [(1, 1)], 16
    else:
        model, model_dir = "minilm", str(minilm_dir())
        concurrencies, a.layouts, overload = (1, 8, 32, 128), [(2, 1), (1, 2)], 320
    texts = sentences(2000 if not a.tiny else 64)
    lengths = [len(ids) for ids in tokenizer()(texts)["input_ids"]]
    reference = embed(model, texts[:16]).numpy()
    env = environment()
    report = {"tiny": a.tiny, "model": model, "seconds": a.seconds, "load_average_start": os.getloadavg(),
              "overload_concurrency": overload,
              "texts": {"n": len(texts), "tokens_p50": float(np.median(lengths)), "tokens_min": min(lengths),
                        "tokens_max": max(lengths)}, "peers": [], "notes": []}
    a.notes = report["notes"]
    servers = peers(a, model, model_dir)
    if not a.infinity_venv:
        report["notes"].append("Infinity was not measured in this run (no --infinity-venv given).")
    for s in servers:
        s.start(tmp)
    live = []
    for s in servers:
        if s.wait(900):
            live.append(s)
            log.info("%s ready", s.name)
        else:
            tail = s.log_file.read_text()[-1500:] if s.log_file else ""
            report["notes"].append(f"{s.name} did not start: `{tail.strip().splitlines()[-1] if tail.strip() else ''}`")
            log.warning("%s did not start:\n%s", s.name, tail)
            s.stop()
    try:
        for s in live:
            s.results["cosine"] = fidelity(s, texts[:16], reference)
            asyncio.run(closed_loop(s, texts[::7], 8, max(1.0, a.seconds / 2)))  # warm-up (compiles, caches)
        for c in concurrencies:
            for s in live:
                r = asyncio.run(closed_loop(s, texts, c, a.seconds))
                s.results.setdefault("loads", []).append(r)
                log.info("%s c=%d: %.1f req/s p50 %s p99 %s errors %d", s.name, c, r["throughput"], r["p50_ms"],
                         r["p99_ms"], r["errors"])
        for s in live:
            s.results["overload"] = asyncio.run(closed_loop(s, texts, overload, a.seconds))
            log.info("%s overload: %s", s.name, s.results["overload"]["statuses"])
    finally:
        for s in servers:
            code = s.stop()
            s.results["exit_code"] = code
    report["load_average_end"] = os.getloadavg()
    for s in servers:
        report["peers"].append({"name": s.name, "config": s.config, **s.results})
    by_c = {p["name"]: {r["concurrency"]: r for r in p.get("loads", [])} for p in report["peers"]}
    others = [n for n in by_c if not n.startswith("slimformer") and 32 in by_c[n]]
    ours = [n for n in by_c if n.startswith("slimformer") and 32 in by_c[n]]
    if others and ours:
        best = max(others, key=lambda n: by_c[n][32]["throughput"])
        b = by_c[best][32]
        report["ratios_c32"] = {"best_peer": best, "best_peer_rps": b["throughput"], "best_peer_p99_ms": b["p99_ms"],
                                "slimformer": {n: {"throughput_ratio": by_c[n][32]["throughput"] / b["throughput"],
                                                   "p99_ms": by_c[n][32]["p99_ms"]} for n in ours}}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    name = "serve_http-tiny" if a.tiny else "serve_http"
    atomic.write_text(a.out_dir / f"{name}.json", json.dumps({"env": env, "results": [report]}, indent=2))
    atomic.write_text(a.out_dir / f"{name}.md", markdown(report, env))
    print(markdown(report, env))


if __name__ == "__main__":
    main()
