"""`report`: markdown, self-contained HTML and a Pareto PNG with baselines marked; renders in Chromium."""

import base64
import json
import random
import re
import shutil
import subprocess
import tempfile

import pytest

from slimformer.errors import SlimformerError
from slimformer.report import write_report
from slimformer.report.tables import load_runs, pareto_front


def record(name, recipe, acc, p50, kind="slimformer", dtype="fp32"):
    return {"name": name, "recipe": recipe, "kind": kind, "task": "digits", "metrics": {"accuracy": acc},
            "latency_ms": {"p50": p50, "p99": p50 * 1.2}, "throughput": 64 / p50 * 1000, "peak_mem_mb": 12.0,
            "size_mb": 1.2, "batch": 64, "seq_len": 65, "threads": 2, "dtype": dtype}


@pytest.fixture
def results_file(tmp_path):
    doc = {"env": {"cpu": "Test CPU", "cores": 2, "versions": {"torch": "2.x"}},
           "results": [record("fp32", "", 0.99, 10.0),
                       record("tome:r=4", "tome:r=4", 0.985, 6.0),
                       record("int8", "int8", 0.99, 7.0, dtype="int8"),
                       record("slow-bad", "prune-ffn:ratio=0.1", 0.97, 9.5),
                       record("ort-int8", "", 0.99, 5.0, kind="baseline", dtype="int8"),
                       record("torchao-int8", "", 0.98, 8.0, kind="baseline", dtype="int8"),
                       {**record("ort-fp32", "", 0.0, 8.5, kind="baseline"), "metrics": {}}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    return path


def test_pareto_front_matches_naive():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.choice([1.0, 2.0, 3.0, 4.0]), rng.choice([0.1, 0.2, 0.3])) for _ in range(rng.randint(1, 9))]
        naive = {i for i, (x, y) in enumerate(pts)
                 if not any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in pts)}
        got = pareto_front(pts)
        # duplicates of a front point: exactly one of them is reported
        assert {pts[i] for i in got} == {pts[i] for i in naive}
        assert [pts[i][0] for i in got] == sorted(pts[i][0] for i in got)


def test_report_files(results_file, tmp_path):
    paths = write_report([results_file], tmp_path / "rep")
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "| tome:r=4 |" in md and "1.67x" in md and "ort-int8" in md and "Test CPU" in md
    html = paths["html"].read_text()
    assert "<img" in html and "src='data:image/png;base64," in html
    assert not re.search(r"(src|href)=['\"](?!data:)", html), "report.html must not reference other files"
    data = re.search(r"base64,([A-Za-z0-9+/=]+)", html).group(1)
    assert base64.b64decode(data) == png
    assert html.count("class='baseline'") == 3


def test_report_rejects_non_contract(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"env": {}, "results": [{"name": "x"}]}))
    with pytest.raises(SlimformerError, match="lacks recipe"):
        load_runs([bad])


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not shutil.which("chromium") and not shutil.os.path.exists(CHROMIUM), reason="no chromium")
def test_html_renders_in_headless_chromium(results_file, tmp_path):
    import matplotlib.image

    paths = write_report([results_file], tmp_path / "rep")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tempfile.mkdtemp()}", f"--screenshot={shot}", "--window-size=1200,1600",
                    paths["html"].resolve().as_uri()], capture_output=True, timeout=60)
    assert shot.exists()
    img = matplotlib.image.imread(shot)
    assert img.shape[0] == 1600 and img.shape[1] == 1200
    # a rendered page has text and an image: far from one flat colour
    assert img[..., :3].std() > 0.05
