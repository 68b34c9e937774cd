"""Multi-process serving (exact outputs, bounded queue, dead worker) and up-front validation of the
`slimformer parallel` commands (errors before any process starts)."""

import contextlib
import os
import signal
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slimformer import io
from slimformer.cli import app
from slimformer.errors import SlimformerError
from slimformer.parallel import launch as launch_module
from slimformer.parallel.launch import JobFailed
from slimformer.parallel.serve import Refused, ServeConfig, Server, request_items


def test_serve_exact_bounded_and_names_dead_worker():
    items = request_items("vit-tiny", 24, seq_len=0, seed=1)
    torch.manual_seed(0)  # the workers build the random-init built-in the same way
    model = io.load("vit-tiny")
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.stack([i[0] for i in items]))).numpy()
    server = Server("vit-tiny", ServeConfig(nproc=2, threads=1, max_batch=4, max_wait_ms=2, queue_size=4,
                                             hang_timeout=20))
    server.start()
    try:
        # exact: answers equal the single-process model on the same items, whatever batches formed
        futures = []
        for item in items:
            while True:
                try:
                    futures.append(server.submit(item))
                    break
                except Refused:
                    time.sleep(0.01)
        got = np.stack([f.result(timeout=60) for f in futures])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        # overload: a burst far beyond the queue is partly refused at once, never queued without bound
        burst = []
        for item in items * 10:
            with contextlib.suppress(Refused):
                burst.append(server.submit(item))
        server.drain()
        s = server.stats()
        assert s["refused"] > 0 and s["lost"] == 0
        assert s["answered"] + s["refused"] == s["submitted"]
        assert s["p99_ms"] >= s["p50_ms"] > 0
        # a dead worker stops the server with its rank named; accepted requests are counted as lost
        for item in items[:3]:
            server.submit(item)
        os.kill(server.procs[1].pid, signal.SIGKILL)
        deadline = time.time() + 10
        while server.error is None and time.time() < deadline:
            time.sleep(0.05)
        assert server.error and "rank 1" in server.error and "died" in server.error
        with pytest.raises(JobFailed, match="rank 1"):
            server.submit(items[0])
    finally:
        server.close()
    s = server.stats()
    assert s["answered"] + s["refused"] + s["lost"] + s["failed"] == s["submitted"]  # every request accounted for
    assert not any(p.is_alive() for p in server.procs)


@pytest.mark.parametrize("args, message", [
    (["pp", "--nproc", "8", "vit-tiny"], "--nproc 8 pipeline stages is more than the model's 4 layers"),
    (["pp", "--nproc", "2", "vit-tiny", "--batch", "6", "--microbatches", "4"], "batch 6 must be divisible"),
    (["pp", "--nproc", "2", "seq2seq-small"], "two stacks"),
    (["tp", "--nproc", "3", "encoder-small"], "number of heads 4 must be divisible by the tensor-parallel degree 3"),
    (["tp", "--nproc", "5", "minilm"], "number of heads 12 must be divisible by the tensor-parallel degree 5"),
    (["ddp", "--nproc", "2", "encoder-small"], "the digits task trains a ViT"),
    (["ddp", "--nproc", "2", "vit-tiny", "--batch", "1000"], "exceeds the 1437 digits training images"),
    (["ddp", "--nproc", "2", "vit-tiny", "--bogus", "1"], "unknown option '--bogus'"),
    (["tp", "--nproc", "2", "vit-tiny", "--nnodes", "3"], "number of heads 4 must be divisible by the "
                                                          "tensor-parallel degree 6"),  # world = nodes x nproc
    (["serve", "--nproc", "0", "vit-tiny"], "--nproc must be >= 1"),
])
def test_bad_input_fails_before_any_process_starts(monkeypatch, args, message):
    def no_launch(*a, **k):
        raise AssertionError("a process was started for invalid input")

    monkeypatch.setattr(launch_module, "launch", no_launch)
    monkeypatch.setattr(launch_module.subprocess, "Popen", no_launch)
    result = CliRunner().invoke(app, ["parallel", *args])
    assert isinstance(result.exception, SlimformerError), result.output
    assert message in str(result.exception)


def test_compressed_models_refused_where_the_split_cannot_work(monkeypatch, tmp_path):
    from slimformer import api

    monkeypatch.setattr(launch_module, "launch", lambda *a, **k: pytest.fail("a process was started"))
    for recipe, command, message in (("tome:r=4", "pp", "token-reduced"), ("int8", "tp", "quantized or bf16")):
        out = tmp_path / recipe.split(":")[0]
        api.compress("vit-tiny", recipe, out=out)
        result = CliRunner().invoke(app, ["parallel", command, "--nproc", "2", str(out)])
        assert isinstance(result.exception, SlimformerError) and message in str(result.exception), result.output
