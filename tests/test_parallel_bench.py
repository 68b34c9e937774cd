"""`benchmarks/parallel.py --tiny` runs every variant (single process, serve NxT, DDP 1 and 2, TP, PP) and
writes its JSON and markdown."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_parallel_benchmark_tiny(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parallel.py"), "--tiny", "--out-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "parallel-tiny.json").read_text())["results"][0]
    serving = report["serving"][0]
    for key in ("single_1x1", "single_1x2", "serve_1x1", "serve_2x1", "serve_1x2"):
        assert serving[key]["throughput"] > 0, key
    assert serving["serve_2x1"]["lost"] == 0
    d = report["distributed"]
    assert d["ddp_2"]["global_batch"] == 2 * d["ddp_1"]["global_batch"] and d["ddp_2_vs_1"] > 0
    assert {r["schedule"] for r in d["pp"]} == {"gpipe", "1f1b"}
    assert all(r["max_abs_diff_output"] <= 1e-5 for r in d["tp"] + d["pp"])
    assert "bubble theory" in (tmp_path / "parallel-tiny.md").read_text()
