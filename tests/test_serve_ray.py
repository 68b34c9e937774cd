"""`slimformer serve --ray --replicas 2` on a local Ray instance on 127.0.0.1: both replicas answer the
same embeddings as `slimformer.embed`, and SIGTERM shuts Ray Serve down with exit code 0. Skipped where
the optional extra (`slimformer[ray]`) is not installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch

import slimformer

pytest.importorskip("ray.serve")


def test_two_ray_replicas_serve_the_same_embeddings(tmp_path):
    from test_serve_http import free_port, post, texts, wait_healthy
    from transformers import BertConfig, BertModel

    from slimformer.tasks.embedding import tokenizer

    model_dir = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    BertModel(cfg).eval().save_pretrained(model_dir, safe_serialization=True)
    tokenizer().save_pretrained(model_dir)
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", "serve", str(model_dir), "--ray", "--replicas", "2",
                             "--workers", "1", "--threads", "1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, 300)
        sample = texts(3)
        expected = slimformer.embed(str(model_dir), sample).numpy()
        fronts = set()
        deadline = time.time() + 60
        while len(fronts) < 2 and time.time() < deadline:  # Ray spreads requests over both replicas
            r = post(base, "/v1/embeddings", {"input": sample})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]])
            np.testing.assert_allclose(got, expected, atol=1e-5)
            fronts.add(httpx.get(f"{base}/info", timeout=30).json()["pid"])
        assert len(fronts) == 2, fronts
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
