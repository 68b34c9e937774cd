"""The timing and memory harness measures what it claims, and `bench` writes the contract of docs/contract.md."""

import json
import subprocess
import sys
import time

import pytest
import torch

from slimformer.bench.memory import peak_memory
from slimformer.bench.timing import interleaved, measure, percentile


def test_percentile_matches_numpy():
    import numpy as np

    values = [float(v) for v in torch.rand(37, generator=torch.Generator().manual_seed(1))]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9)


def test_known_sleep_gives_p50_within_10_percent():
    t = measure(lambda: time.sleep(0.02), batch=4, repeats=15, warmup_seconds=0.2)
    assert t.p50_ms == pytest.approx(20.0, rel=0.10)
    assert t.p99_ms >= t.p50_ms
    assert t.throughput == pytest.approx(4 / (t.p50_ms / 1000))


def test_interleaved_ratio_and_round_robin_order():
    calls: list[str] = []

    def sleeper(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    fns = {"a": sleeper("a", 0.01), "b": sleeper("b", 0.03), "c": sleeper("c", 0.02)}
    out = interleaved(fns, batch=1, rounds=6, calls_per_round=1, warmup_seconds=0.05)
    assert out["b"].p50_ms / out["a"].p50_ms == pytest.approx(3.0, rel=0.10)
    assert out["c"].p50_ms == pytest.approx(20.0, rel=0.10)
    timed = calls[-18:]  # the last 6 rounds x 3 variants, after warm-up
    rounds = [timed[i:i + 3] for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert {r[0] for r in rounds} == {"a", "b", "c"}  # the first slot rotates: noise is shared


def test_interleaved_respects_time_budget():
    out = interleaved({"x": lambda: time.sleep(0.01)}, batch=1, rounds=1000, calls_per_round=1,
                      warmup_seconds=0.05, max_seconds=0.2, min_rounds=3)
    assert 3 <= out["x"].repeats < 60


@pytest.mark.parametrize("mb", [64, 256])
def test_peak_memory_of_known_allocation_within_10_percent(mb):
    got = peak_memory("slimformer.bench.memory:allocation_probe", {"mb": mb}, calls=2, threads=1)
    assert got["peak_mem_mb"] == pytest.approx(mb, rel=0.10)
    assert got["peak_rss_mb"] > got["base_mb"]


def test_peak_memory_is_per_process():
    """A big allocation in this process must not leak into the fresh process's number."""
    hog = torch.ones(64 * 2**18)  # 64 MiB held here
    got = peak_memory("slimformer.bench.memory:allocation_probe", {"mb": 1}, calls=1, threads=1)
    assert got["peak_mem_mb"] < 10
    del hog


def check_contract(doc: dict) -> None:
    assert set(doc) == {"env", "results"}
    for key in ("cpu", "cores", "versions"):
        assert key in doc["env"]
    assert "torch" in doc["env"]["versions"]
    for r in doc["results"]:
        for key, kind in (("name", str), ("recipe", str), ("metrics", dict), ("latency_ms", dict),
                          ("throughput", float), ("batch", int), ("seq_len", int), ("threads", int),
                          ("dtype", str)):
            assert isinstance(r[key], kind), (key, r[key])
        assert r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
        assert isinstance(r["peak_mem_mb"], float) and r["peak_mem_mb"] >= 0
        assert isinstance(r["size_mb"], float) and r["size_mb"] > 0


def test_bench_json_matches_contract(tmp_path):
    from slimformer.api import write_results
    from slimformer.bench.runner import bench

    results = bench("vit-tiny", ["prune-heads:ratio=0.5"], batch=4, threads=2, rounds=3, task="digits")
    doc = json.loads(write_results(tmp_path / "r.json", results).read_text())
    check_contract(doc)
    by_name = {r["name"]: r for r in doc["results"]}
    assert set(by_name) == {"fp32", "prune-heads:ratio=0.5"}
    assert by_name["fp32"]["recipe"] == "" and by_name["fp32"]["seq_len"] == 65  # 8x8 patches + class token
    assert "accuracy" in by_name["fp32"]["metrics"]
    pruned = by_name["prune-heads:ratio=0.5"]
    assert pruned["n_params"] < by_name["fp32"]["n_params"] and pruned["size_mb"] < by_name["fp32"]["size_mb"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "slimformer", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_and_one_line_errors(tmp_path):
    for cmd in ("bench", "report", "search"):
        out = run_cli(cmd, "--help")
        assert out.returncode == 0 and "Example: slimformer " + cmd in " ".join(out.stdout.split()), cmd
    out = run_cli("bench", "vit-tiny", "--baselines", "nope", "--json", str(tmp_path / "x.json"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--baselines" in out.stderr
    out = run_cli("report", str(tmp_path / "missing.json"), "--out", str(tmp_path))
    assert out.returncode == 2 and "no such results file" in out.stderr


def test_settle_waits_out_a_slow_tail():
    from slimformer.bench.timing import settle

    calls = []

    def first_calls_slow():  # the first 5 calls 10x slower (lazy init), then steady
        calls.append(1)
        time.sleep(0.02 if len(calls) <= 5 else 0.002)

    assert settle(first_calls_slow, window=8, max_spread=1.5, max_seconds=5) <= 1.5
    assert len(calls) >= 5 + 8  # kept calling until the slow calls left the window whose spread is judged

    def always_spiky():
        calls.append(1)
        time.sleep(0.02 if len(calls) % 4 == 0 else 0.002)

    assert settle(always_spiky, window=8, max_spread=1.5, max_seconds=0.3) > 1.5  # gives up at the limit
