"""Serving under overload (`slimformer.parallel.serve`): far more requests than the server can take, from
several threads at once, with no back-off. The bounded queue must shed the excess at once (`refused`),
in-flight work must stay bounded, every request must be accounted for, and none accepted may be lost.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from _hardening import TALLY, flush

from slimformer import io
from slimformer.parallel.serve import Refused, ServeConfig, Server, request_items

SECTION = "overload"
QUEUE, MAX_BATCH, NPROC = 8, 4, 1


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    flush(SECTION)


def test_overload_sheds_with_a_bound_and_loses_nothing():
    items = request_items("vit-tiny", 16, seq_len=0, seed=3)
    torch.manual_seed(0)  # workers build the random-init built-in the same way
    model = io.load("vit-tiny")
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.stack([i[0] for i in items]))).numpy()

    accepted: list[tuple[int, object]] = []
    refused = [0]
    peak_in_flight = [0]
    lock = threading.Lock()
    seconds = 2.0  # sustained: the worker answers many batches while the flood goes on

    def flood(offset: int) -> None:
        k, stop = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            k += 1
            time.sleep(0)  # yield the GIL so the result collector keeps up, as a real front end would
            idx = (offset + k) % len(items)
            try:
                fut = server.submit(items[idx])
            except Refused:
                with lock:
                    refused[0] += 1
                continue
            with lock:
                accepted.append((idx, fut))
                peak_in_flight[0] = max(peak_in_flight[0], len(server.pending))

    server = Server("vit-tiny", ServeConfig(nproc=NPROC, threads=1, max_batch=MAX_BATCH, max_wait_ms=2,
                                             queue_size=QUEUE, hang_timeout=60))
    server.start()
    try:
        start = time.perf_counter()
        threads = [threading.Thread(target=flood, args=(t * 5,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submit_s = time.perf_counter() - start
        server.drain(timeout=120)
        for idx, fut in accepted:  # every accepted request got *its* answer
            np.testing.assert_allclose(fut.result(timeout=60), expected[idx], atol=1e-5, rtol=0)
    finally:
        server.close()
    s = server.stats()
    for key in ("submitted", "answered", "refused", "lost", "failed"):
        TALLY[SECTION][key] += int(s[key])
    assert s["submitted"] == len(accepted) + refused[0]
    assert s["refused"] == refused[0] > 10 * s["answered"] > 0, "overload was not shed"
    assert s["answered"] == len(accepted)
    assert s["lost"] == 0 and s["failed"] == 0
    assert s["answered"] + s["refused"] + s["lost"] + s["failed"] == s["submitted"]
    # bounded: queue + one batch per worker, plus answers not yet collected; never the thousands submitted
    assert peak_in_flight[0] <= 4 * (QUEUE + NPROC * MAX_BATCH), peak_in_flight[0]
    assert submit_s < seconds + 10  # refusals are immediate: the flood never blocked on a full queue
