"""Recipes and `slimformer compress`: every example recipe is valid, every mistake is one clear message
naming the step/option and the valid choices, and a failed compress leaves no output dir behind."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimformer import io
from slimformer.cli import main
from slimformer.compress.lowrank import LowRankLinear
from slimformer.compress.recipe import parse_recipe
from slimformer.compress.steps import all_steps
from slimformer.errors import SlimformerError

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_there_are_example_recipes():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_example_recipes_are_valid(path):
    steps = parse_recipe(path)
    assert steps and all(s.step.name in all_steps() for s in steps)


@pytest.mark.parametrize("recipe, message", [
    ("prune-head:ratio=0.25", r"unknown step 'prune-head'; valid steps: .*prune-ffn, prune-heads"),
    ("prune-heads:fraction=0.25", r"unknown option 'fraction' for step 'prune-heads'; valid options: ratio, score"),
    ("prune-ffn:ratio=lots", r"option 'ratio' of step 'prune-ffn' must be a finite number, got 'lots'"),
    ("prune-heads:score=random", r"option 'score' of step 'prune-heads' must be one of 'activation', 'weight'"),
    ("lowrank:rank=1.5", r"option 'rank' of step 'lowrank' must be int or none, got '1.5'"),
    ("distill:epochs=0", r"option 'epochs' of step 'distill' must be >= 1, got 0"),
])
def test_recipe_errors_are_clear(recipe, message):
    with pytest.raises(SlimformerError, match=message):
        parse_recipe(recipe)


def test_builtin_steps_are_registered():
    """A broken registration must fail here, not make other tests skip."""
    assert {"int8", "int8-weight", "bf16", "prune-heads", "prune-ffn", "lowrank", "distill", "tome"} <= set(all_steps())


@pytest.mark.parametrize("low", ["int8", "int8-weight", "bf16"])
@pytest.mark.parametrize("step", ["prune-heads", "prune-ffn", "lowrank", "distill"])
def test_float_steps_refused_after_low_precision(low, step):
    with pytest.raises(SlimformerError, match=f"step '{step}' cannot come after '{low}': it needs "
                                              f"float weights; put '{low}' last"):
        parse_recipe(f"{low}+{step}")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([*args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_compress_cli_writes_a_reloadable_dir(tmp_path, capsys):
    out = tmp_path / "small"
    code, stdout, _ = run_cli(capsys, "compress", "vit-tiny", "--recipe", "prune-heads:ratio=0.5+lowrank:rank=8",
                              "--out", str(out))
    assert code == 0 and "saved" in stdout
    meta = json.loads((out / "slimformer.json").read_text())
    assert [e["step"] for e in meta["recipe"]] == ["prune-heads", "lowrank"]
    assert meta["recipe"][0]["options"]["ratio"] == 0.5
    assert meta["size_mb"] == round((out / "model.safetensors").stat().st_size / 2**20, 4)
    model = io.load_model_dir(out)
    assert model.blocks[0].attn.n_heads == 2 and isinstance(model.blocks[0].mlp.fc1, LowRankLinear)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("recipe, needle", [
    ("prune-heads:ratio=2", "'ratio' of step 'prune-heads' must be in [0, 1)"),    # refused while parsing
    ("lowrank:rank=8+prune-ffn:ratio=0.5", "put 'prune-ffn' before"),               # fails while applying
    ("prune-ffn+distill", "step 'distill' needs data"),                            # fails after a step ran
])
def test_failed_compress_leaves_nothing(tmp_path, capsys, recipe, needle):
    out = tmp_path / "out" / "small"
    code, _, err = run_cli(capsys, "compress", "vit-tiny", "--recipe", recipe, "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1] and "Traceback" not in err
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no staging dir left


def test_failed_compress_keeps_the_previous_dir(tmp_path, capsys):
    out = tmp_path / "small"
    assert run_cli(capsys, "compress", "vit-tiny", "--recipe", "prune-ffn:ratio=0.5,score=weight", "--out",
                   str(out))[0] == 0
    before = (out / "slimformer.json").read_text()
    assert run_cli(capsys, "compress", "vit-tiny", "--recipe", "lowrank:rank=8+prune-ffn", "--out", str(out))[0] == 2
    assert (out / "slimformer.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


def test_compress_cli_error_is_one_line_exit_2(tmp_path):
    """The real process: exit code 2, exactly one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "slimformer", "compress", "vit-tiny", "--recipe", "int9+prune-heads",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown step 'int9'; valid steps:"), proc.stderr
    assert not (tmp_path / "x").exists()


def test_structure_steps_compose_with_int8_and_reload(tmp_path):
    """prune + low-rank + int8 in one recipe: the saved dir rebuilds every structure and gives the same
    outputs as the in-memory model."""
    from slimformer.api import compress_model
    from slimformer.models import build_builtin

    model, record = compress_model(build_builtin("vit-tiny"),
                                   "prune-heads:ratio=0.5,score=weight+lowrank:rank=16+int8")
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
    loaded = io.load_model_dir(io.save_model(model, tmp_path / "m", recipe=record))
    assert loaded.blocks[0].attn.n_heads == 2 and isinstance(loaded.blocks[0].mlp.fc1, LowRankLinear)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
