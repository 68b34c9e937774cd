"""`slimformer serve` over real HTTP on 127.0.0.1: route shapes, embeddings equal to `slimformer.embed`,
every error status with its JSON body, a full queue (429), a killed worker (restarted, nothing lost),
SIGTERM (drains, exits 0). One server subprocess (a tiny random BERT with MiniLM's tokenizer, 2 workers)
serves the module; the SIGTERM test stops it, so it runs last. Every load loop is bounded in count and
every request in time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch

import slimformer
from slimformer.parallel.serve import pick_batch
from slimformer.tasks.embedding import tokenizer

MAX_INPUTS, MAX_QUEUE, POSITIONS = 4, 8, 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BERT (init std 0.2, so a wrong pooling or mask shows) with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("serve") / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=POSITIONS, initializer_range=0.2)
    BertModel(cfg).eval().save_pretrained(out, safe_serialization=True)
    tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", "serve", str(model_dir), "--port", str(port),
                             "--workers", "2", "--threads", "1", "--max-inputs", str(MAX_INPUTS), "--max-queue",
                             str(MAX_QUEUE), "--max-batch-tokens", "256", "--max-wait-ms", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, 120)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def wait_healthy(base: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited {proc.returncode}: {proc.stderr.read()[-2000:]}"
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not healthy within {seconds} s")


def post(base: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=30, **kw)


def assert_error(r: httpx.Response, status: int, param: str | None, text: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param"}
    assert error["param"] == param and text in error["message"], error


def texts(n: int) -> list[str]:
    from slimformer.tasks.embedding import sentences

    return [t for t in sentences(4 * n) if len(t) < 150][:n]  # real verses of natural, short lengths


def test_pick_batch_groups_similar_lengths_within_the_budget():
    costs = [10, 50, 11, 49, 12, 9]
    assert pick_batch(costs, max_batch=3, max_tokens=0) == [0, 1, 2]  # no budget: oldest first, by count
    assert pick_batch(costs, max_batch=8, max_tokens=48) == [0, 2, 4, 5]  # 4 x 12 <= 48: the short ones
    assert pick_batch(costs, max_batch=2, max_tokens=1000) == [0, 2]
    assert pick_batch([100, 5], max_batch=8, max_tokens=64) == [0]  # the oldest always goes, even alone


def test_routes_answer_the_contract_and_equal_the_python_api(server, model_dir):
    _, base = server
    sample = texts(3)
    expected = slimformer.embed(str(model_dir), sample).numpy()
    r = post(base, "/v1/embeddings", {"input": sample, "model": "tiny-bert"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny-bert" and body["usage"]["prompt_tokens"] > 3
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and got.shape == (3, 32)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert abs(float((expected[0] * expected[1]).sum())) < 0.9999  # distinct texts, distinct vectors

    one = post(base, "/v1/embeddings", {"input": sample[0], "encoding_format": "base64", "dimensions": 8}).json()
    vec = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (8,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    np.testing.assert_allclose(vec, expected[0, :8] / np.linalg.norm(expected[0, :8]), atol=1e-5)
    ids = tokenizer()(sample[0])["input_ids"]  # OpenAI's token-id form gives the same vector
    by_ids = post(base, "/v1/embeddings", {"input": ids}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(by_ids, got[0], atol=1e-6)

    tei = post(base, "/embed", {"inputs": sample[:2]})
    assert tei.status_code == 200
    np.testing.assert_allclose(np.array(tei.json()), expected[:2], atol=1e-5)
    raw = np.array(post(base, "/embed", {"inputs": sample[0], "normalize": False}).json())
    assert raw.shape == (1, 32) and abs(np.linalg.norm(raw) - 1) > 1e-3  # the plain mean, not normalized
    np.testing.assert_allclose(raw[0] / np.linalg.norm(raw), expected[0], atol=1e-5)
    long_text = " ".join(sample * 10)
    assert post(base, "/embed", {"inputs": long_text, "truncate": True}).status_code == 200

    assert httpx.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    info = httpx.get(f"{base}/info", timeout=10).json()
    assert info["kind"] == "text-encoder" and info["dimensions"] == 32 and info["max_input_tokens"] == POSITIONS
    assert info["cpu"]["cores"] and "torch" in info["versions"] and len(info["workers"]) == 2
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    for name in ('slimformer_requests_total{route="/v1/embeddings",status="200"}', "slimformer_batch_size_bucket",
                 "slimformer_batch_tokens_bucket", "slimformer_queue_depth", "slimformer_request_duration_seconds"):
        assert name in metrics, name


BAD = [  # (path, body, status, param, part of the message)
    ("/v1/embeddings", b"{not json", 422, "body", "not valid JSON"),
    ("/v1/embeddings", [1, 2], 422, "body", "must be a JSON object"),
    ("/v1/embeddings", {"model": "x"}, 422, "input", "'input' is required"),
    ("/v1/embeddings", {"input": 3}, 422, "input", "must be a string or a list of strings"),
    ("/v1/embeddings", {"input": []}, 422, "input", "is empty"),
    ("/v1/embeddings", {"input": ["ok", ""]}, 422, "input", "input[1] is empty"),
    ("/v1/embeddings", {"input": ["ok", {"a": 1}]}, 422, "input", "input[1] must be a string"),
    ("/v1/embeddings", {"input": "ok", "encoding_format": "hex"}, 422, "encoding_format", "'float', 'base64'"),
    ("/v1/embeddings", {"input": "ok", "dimensions": 0}, 422, "dimensions", "[1, 32]"),
    ("/v1/embeddings", {"input": "ok", "dimensions": "8"}, 422, "dimensions", "must be int"),
    ("/v1/embeddings", {"input": "ok", "model": 5}, 422, "model", "must be str"),
    ("/v1/embeddings", {"input": [[5, 99999]]}, 422, "input", "vocabulary"),  # through guard.check_tokens
    ("/v1/embeddings", {"input": ["a"] * (MAX_INPUTS + 1)}, 413, "input", f"at most {MAX_INPUTS} per request"),
    ("/v1/embeddings", {"input": "word " * 200}, 413, "input", f"longer than the model's {POSITIONS} tokens"),
    ("/embed", {"inputs": "word " * 200}, 413, "inputs", "truncate: true"),
    ("/embed", {"inputs": "ok", "normalize": "yes"}, 422, "normalize", "must be bool"),
    ("/embed", {"input": "ok"}, 422, "inputs", "'inputs' is required"),
    ("/v1/classify", {"input": [0]}, 404, None, "Not Found"),
]


@pytest.mark.parametrize("path, body, status, param, text", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_json_error_naming_the_field(server, path, body, status, param, text):
    _, base = server
    if isinstance(body, bytes):
        r = httpx.post(f"{base}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = post(base, path, body)
    assert_error(r, status, param, text)


def test_wrong_method_and_oversized_body(server):
    _, base = server
    assert_error(httpx.get(f"{base}/v1/embeddings", timeout=10), 405, None, "Method Not Allowed")
    big = b'{"input": "' + b"a" * (9 * 2**20) + b'"}'
    r = httpx.post(f"{base}/v1/embeddings", content=big, headers={"content-type": "application/json"}, timeout=30)
    assert_error(r, 413, "body", "bytes")


async def burst(base: str, n: int, inputs: list[str], timeout: float = 60) -> list[httpx.Response | Exception]:
    """`n` requests at once, each answered or failed within `timeout` s."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        calls = [client.post("/v1/embeddings", json={"input": inputs}) for _ in range(n)]
        return await asyncio.gather(*calls, return_exceptions=True)


def test_full_queue_answers_429_with_retry_after_and_nothing_else(server):
    _, base = server
    seen: dict[int, int] = {}
    for _ in range(5):  # bounded: a burst of 48 x 4 inputs into a queue of 8 sheds at once, every time
        for r in asyncio.run(burst(base, 48, texts(MAX_INPUTS))):
            assert isinstance(r, httpx.Response), r
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert_error(r, 429, None, "queue full")
        if seen.get(429):
            break
    assert set(seen) == {200, 429} and seen[429] > 0 and seen[200] > 0, seen


def test_killed_worker_is_restarted_and_no_request_is_lost(server):
    _, base = server
    before = httpx.get(f"{base}/info", timeout=10).json()
    victim = before["workers"][1]["pid"]

    async def load_and_kill() -> list:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            async def one(i: int):
                if i == 12:
                    os.kill(victim, signal.SIGKILL)
                return await client.post("/v1/embeddings", json={"input": texts(2)})

            results = []
            for start in range(0, 64, 8):  # 8 waves of 8 concurrent requests; the kill lands in wave 2
                results += await asyncio.gather(*(one(i) for i in range(start, start + 8)), return_exceptions=True)
            return results

    results = asyncio.run(load_and_kill())
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
    assert len(statuses) == 64 and set(statuses) <= {200, 503, 429}, statuses  # every request answered
    for r in results:
        if r.status_code == 503:
            assert "worker lost" in r.json()["error"]["message"]
    assert statuses[-8:].count(200) >= 1  # the survivor kept serving while its peer restarted
    wait_healthy(base, server[0], 90)
    after = httpx.get(f"{base}/info", timeout=10).json()
    assert after["restarts"] == before["restarts"] + 1 and after["workers"][1]["pid"] != victim
    assert post(base, "/v1/embeddings", {"input": "answers again"}).status_code == 200


@pytest.fixture(scope="module")
def image_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", "serve", "vit-tiny", "--port", str(port), "--workers",
                             "1", "--threads", "1", "--max-inputs", str(MAX_INPUTS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, 120)
        yield base
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_classify_answers_top_k_of_the_model_and_refuses_bad_images(image_server):
    from slimformer import io

    base = image_server
    info = httpx.get(f"{base}/info", timeout=10).json()
    assert info["kind"] == "image-classifier"
    shape = info["input_shape"]
    images = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # the workers build the random-init built-in the same way
    with torch.inference_mode():
        probs = torch.softmax(io.load("vit-tiny")(images), -1)
    r = post(base, "/v1/classify", {"input": images.tolist(), "top_k": 3})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    for d, p in zip(data, probs, strict=True):
        top = torch.topk(p, 3)
        assert [x["index"] for x in d["labels"]] == top.indices.tolist()
        np.testing.assert_allclose([x["score"] for x in d["labels"]], top.values.numpy(), atol=1e-5)
    one = post(base, "/v1/classify", {"input": images[0].tolist()}).json()["data"]
    assert len(one) == 1 and len(one[0]["labels"]) == min(5, len(info["labels"]))
    assert_error(post(base, "/v1/classify", {"input": [[1.0, 2.0]]}), 422, "input", "has shape [1, 2]")
    assert_error(post(base, "/v1/classify", {"input": [["a"]]}), 422, "input", "numeric array")
    nan = json.dumps({"input": images[0].tolist()}).replace(str(images[0, 0, 0, 0].item()), "NaN", 1)
    r = httpx.post(f"{base}/v1/classify", content=nan, headers={"content-type": "application/json"}, timeout=30)
    assert_error(r, 422, "input", "NaN/Inf")  # guard.check_images
    assert_error(post(base, "/v1/classify", {"input": [[[[1.0] * 3] * 3]]}), 422, "input", "resize them first")
    assert_error(post(base, "/v1/classify", {"input": images[0].tolist(), "top_k": 0}), 422, "top_k", "[1, ")
    many = torch.zeros(MAX_INPUTS + 1, *shape).tolist()
    assert_error(post(base, "/v1/classify", {"input": many}), 413, "input", f"at most {MAX_INPUTS}")
    assert_error(post(base, "/v1/embeddings", {"input": "x"}), 404, None, "Not Found")  # routes follow the kind


def test_sigterm_drains_in_flight_requests_and_exits_0(server):
    """Runs last: it stops the module's server. The workers are frozen (SIGSTOP) while the requests
    arrive, so they are certainly accepted and unanswered when SIGTERM lands; thawed after it, every
    one must still be answered, then the server exits 0."""
    proc, base = server
    workers = [w["pid"] for w in httpx.get(f"{base}/info", timeout=10).json()["workers"]]

    def in_flight() -> float:
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        return float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("slimformer_in_flight ")))

    async def load_then_term() -> list:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            calls = [asyncio.ensure_future(client.post("/v1/embeddings", json={"input": text}))
                     for text in texts(MAX_QUEUE)]  # as many inputs as the queue holds: none refused
            deadline = time.time() + 30
            while in_flight() < MAX_QUEUE and time.time() < deadline:
                await asyncio.sleep(0.1)
            assert in_flight() == MAX_QUEUE
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            return await asyncio.gather(*calls, return_exceptions=True)

    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        results = asyncio.run(load_then_term())
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=2)
