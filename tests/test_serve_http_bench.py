"""`benchmarks/serve_http.py --tiny` starts slimformer serve and the FastAPI peer on a tiny model, loads
them over HTTP, and writes its JSON and markdown with every cell answered."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_serve_http_benchmark_tiny(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_http.py"), "--tiny", "--out-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "serve_http-tiny.json").read_text())["results"][0]
    names = [p["name"] for p in report["peers"]]
    assert names == ["slimformer fp32 1x1", "sentence-transformers + FastAPI"], names  # fastapi: the [test] extra
    for peer in report["peers"]:
        assert [r["concurrency"] for r in peer["loads"]] == [1, 8]
        assert all(r["throughput"] > 0 and r["errors"] == 0 for r in peer["loads"]), peer
        assert peer["cosine"] > 0.9999, peer
        assert set(peer["overload"]["statuses"]) <= {"200", "429"}
    assert report["peers"][0]["exit_code"] == 0  # slimformer serve drained and exited 0 on SIGTERM
    assert "Infinity was not measured" in (tmp_path / "serve_http-tiny.md").read_text()
