"""The command line: help teaches, user errors are one line with exit code 2 and no traceback."""

import subprocess
import sys

import pytest

from slimformer.models import build_builtin


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "slimformer", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_help_has_examples():
    out = run("--help")
    assert out.returncode == 0 and "slimformer demo" in out.stdout
    for cmd in ("train", "evaluate", "models", "demo"):
        sub = run(cmd, "--help")
        assert sub.returncode == 0 and "Example" in sub.stdout, cmd


def test_models_lists_builtins():
    out = run("models")
    assert out.returncode == 0
    for name in ("vit-tiny", "vit-b16", "encoder-small", "seq2seq-small", "minilm", "digits"):
        assert name in out.stdout


def one_line_error(out):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_missing_model_dir(tmp_path):
    line = one_line_error(run("evaluate", str(tmp_path / "nope"), "--task", "digits"))
    assert "nope" in line


@pytest.mark.parametrize("damage", ["missing", "truncated", "arch", "shape"])
def test_bad_model_dirs_give_one_line(tmp_path, damage):
    import json

    from slimformer import io

    out = io.save_model(build_builtin("vit-tiny"), tmp_path / "m", extra={"task": "digits"})
    weights, meta_path = out / "model.safetensors", out / "slimformer.json"
    meta = json.loads(meta_path.read_text())
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:500])
    elif damage == "arch":
        meta["architecture"] = "nope"
    elif damage == "shape":
        meta["config"]["d_model"] = 64
    if damage in ("arch", "shape"):
        meta_path.write_text(json.dumps(meta))
    line = one_line_error(run("evaluate", str(out), "--task", "digits"))
    expect = {"missing": "model.safetensors", "truncated": "model.safetensors", "arch": "unknown architecture",
              "shape": "tensor '"}[damage]
    assert expect in line


def test_unknown_task():
    line = one_line_error(run("evaluate", "vit-tiny", "--task", "nope"))
    assert "unknown task 'nope'" in line


def test_train_option_a_task_does_not_take_is_named(tmp_path):
    """`--minutes` belongs to clock-budgeted tasks (translation); digits trains by epochs and says so."""
    line = one_line_error(run("train", "digits", "--out", str(tmp_path / "d"), "--minutes", "5"))
    assert "takes no --minutes" in line
    assert not (tmp_path / "d").exists()
