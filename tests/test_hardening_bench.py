"""benchmarks/hardening.py --tiny: the counts report is produced from the tests' own tallies."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_hardening_benchmark_tiny(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hardening.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "hardening.json").read_text())
    assert {"env", "totals", "results", "test_runs"} <= set(doc)
    names = {r["name"] for r in doc["results"]}
    assert {"recipe-inline", "recipe-yaml"} <= names
    assert doc["totals"]["cases_tried"] >= 20 and doc["totals"]["artifacts_lost"] == 0
    assert doc["totals"]["crashes_or_timeouts"] == 0 and doc["totals"]["errors_by_kind"]
    assert "Cases tried" in (tmp_path / "hardening.md").read_text()
