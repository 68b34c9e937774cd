"""benchmarks/peers.py --tiny: every row (ours and every peer's) carries its metric, the header its CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
PEERS = {"fp32", "fast", "ort-fp32", "ort-int8", "ort-int8-static", "ov-fp32", "ov-int8"}


def load_script():
    path = Path(__file__).parent.parent / "benchmarks" / "peers.py"
    spec = importlib.util.spec_from_file_location("peers_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_peers_every_row_has_its_metric(tmp_path):
    load_script().main(["--tiny", "--threads", "1", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "peers.json").read_text())
    rows = {r["name"]: r for r in doc["results"]}
    assert set(rows) >= PEERS
    for name, r in rows.items():
        cos = r["metrics"].get("cosine")
        assert cos is not None and 0 < cos <= 1 + 1e-6, (name, r["metrics"])
        assert r["latency_ms"]["p50"] > 0 and r["size_mb"] > 0
    # fp32 graphs compute what torch fp32 computes: their metric is fp32's to rounding; int8 ones are close
    for name in ("ort-fp32", "ov-fp32"):
        assert rows[name]["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    for name in ("ort-int8", "ort-int8-static", "ov-int8", "fast"):
        assert rows[name]["metrics"]["cosine"] >= 0.9, name
    md = (tmp_path / "peers.md").read_text()
    assert "cores, kind" in md and doc["env"]["cpu_kind"] in md and "ov-int8" in md
    assert doc["acceptance"] and "pass" in doc["acceptance"][0]
