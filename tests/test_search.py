"""`search`: the space is generated from the registry, the beam keeps the front, and a tiny search runs,
writes its files, stays within the budget and resumes from its cache."""

import json

import pytest
import yaml

from slimformer.compress.recipe import parse_recipe
from slimformer.compress.steps import all_steps
from slimformer.search import Candidate, SearchConfig, beam_front, family_grid, join, midpoint


def test_grids_are_valid_recipes_mild_to_aggressive():
    steps = all_steps()
    for step in steps.values():
        for recipe in family_grid(step, tokens=65):
            parse_recipe(recipe)  # every generated setting validates
    tome = family_grid(steps["tome"], tokens=65)
    rs = [int(r.split("=")[1]) for r in tome]
    assert rs == sorted(rs) and len(rs) >= 3
    # text: the share of each row kept, mild to aggressive, each a valid recipe
    text = family_grid(steps["tome"], tokens=128, text=True)
    ratios = [float(r.split("keep_ratio=")[1]) for r in text]
    assert ratios == sorted(ratios, reverse=True) and len(ratios) >= 3 and ratios[0] < 1
    assert all(r.startswith("tome:schedule=keep,") for r in text)
    for recipe in text + family_grid(steps["int8"], tokens=128, text=True):
        parse_recipe(recipe)


def test_join_puts_steps_in_a_valid_order():
    recipe = join(["int8", "tome:r=4", "distill", "prune-ffn:ratio=0.25"])
    assert recipe == "prune-ffn:ratio=0.25+tome:r=4+distill+int8"
    parse_recipe(recipe if "int8" in all_steps() else recipe.removesuffix("+int8"))


def test_midpoint():
    assert midpoint("r", 0, 5) == 2 and midpoint("r", 4, 5) is None
    assert midpoint("keep_rate", 1.0, 0.9) == 0.95 and midpoint("ratio", 0.0, 0.125) == 0.0625


def test_beam_front_keeps_fast_and_accurate_ends():
    cands = [Candidate(f"c{i}", latency_ms=lat, drop=drop, ok=True)
             for i, (lat, drop) in enumerate([(10, 0.0), (8, 0.002), (6, 0.004), (5, 0.008), (4, 0.01), (9, 0.01)])]
    beam = beam_front(cands, 3)
    assert [c.recipe for c in beam] == ["c4", "c2", "c0"]  # c5 is dominated; ends kept, middle spread


def test_tiny_search_runs_writes_and_resumes(digits_model_dir, tmp_path):
    """benchmarks/search.py --tiny: a real search (two families, small batch, short timing) end to end."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "search.py"
    spec = importlib.util.spec_from_file_location("search_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ran = bench.main(["digits", "--tiny", "--max-drop", "0.03", "--model", str(digits_model_dir), "--work",
                      str(tmp_path / "s"), "--out", str(tmp_path)])
    outcome, out = ran["outcome"], tmp_path / "s"
    for name in ("results.json", "front.json", "best_recipe.yaml", "report.html", "pareto.png", "cache.json"):
        assert (out / name).exists(), name
    assert "| fp32 |" in (tmp_path / "search_digits.md").read_text()
    doc = json.loads((out / "results.json").read_text())
    base = doc["results"][0]
    assert base["name"] == "fp32"
    best = next(r for r in doc["results"] if r["recipe"] == outcome.best)
    assert base["metrics"]["accuracy"] - best["metrics"]["accuracy"] <= 0.03 + 1e-9
    parse_recipe(str(out / "best_recipe.yaml"))  # the YAML is a valid recipe
    assert yaml.safe_load((out / "best_recipe.yaml").read_text())["steps"] or outcome.best == ""
    cfg = SearchConfig(model=str(digits_model_dir), task="digits", max_drop=0.03, out=out, batch=8,
                       steps=["tome"])
    cache = json.loads((out / "cache.json").read_text())["candidates"]
    assert any(k.startswith("tome") for k in cache)
    # every over-budget candidate stopped its branch: nothing more aggressive in that family was tried
    for fam in ("tome",):
        tried = [v for k, v in cache.items() if k.startswith(fam) and "+" not in k]
        fails = [i for i, v in enumerate(tried) if not v["ok"]]
        assert not fails or len(tried) - fails[0] <= 2  # a failure ends the branch (after one milder retry)

    from slimformer.search import Search

    again = Search(cfg)
    again.load_cache()
    again.base_ms, again.base_metric = 1.0, base["metrics"]["accuracy"]
    for recipe in cache:
        again.evaluate(recipe)
    assert again.evaluated == 0  # resumed entirely from the cache
    assert again.resumed == set(cache)  # and counted as resumed, each once


def test_budget_leaves_room_for_the_longest_candidate(tmp_path):
    """Stage 1 stops at its share of the budget; stage 2 starts no candidate that, taking as long as the
    longest so far, would overrun the whole budget (a compiled candidate can take minutes)."""
    import time

    from slimformer.search import SINGLES_SHARE, Search

    cfg = SearchConfig(model="vit-tiny", task="digits", max_drop=0.01, out=tmp_path, batch=4, budget_s=100.0)
    s = Search(cfg)
    s.started = time.perf_counter() - 40  # 40 s spent
    assert not s.over_budget() and not s.over_budget(SINGLES_SHARE)
    s.cache["slow"] = {"recipe": "slow", "seconds": 70.0}
    assert s.over_budget()  # 40 + 70 > 100
    s.loaded = {"slow"}  # an earlier run's entry says nothing about this run's pace
    assert not s.over_budget()
    s.started = time.perf_counter() - 60
    assert s.over_budget(SINGLES_SHARE) and not s.over_budget()
    assert not Search(SearchConfig(model="vit-tiny", task="digits", max_drop=0.01, out=tmp_path,
                                   budget_s=None)).over_budget()


def test_flags_and_static_int8_are_in_the_space():
    steps = all_steps()
    assert family_grid(steps["bf16-attention"], tokens=65) == ["bf16-attention"]
    assert "int8:activations=static,compile=true" in family_grid(steps["int8"], tokens=65)
    assert join(["int8:compile=true", "bf16-attention", "tome:r=2"]) == "tome:r=2+bf16-attention+int8:compile=true"


def test_search_names_no_step():
    """What the search knows of a step comes from the step (compress/registry.py): no step name appears in
    any string (tables, recipes, docs) of search.py."""
    import ast
    import re
    from pathlib import Path

    import slimformer.search as search

    strings = [n.value for n in ast.walk(ast.parse(Path(search.__file__).read_text()))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for name in all_steps():
        pattern = re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])")
        assert not [s for s in strings if pattern.search(s)], f"search.py names step {name!r}"


def test_a_registered_toy_step_is_swept(monkeypatch, tmp_path):
    """One registration line is all the search needs: a toy structural step with a knob is swept mild to
    aggressive (its identity seeding the halfway rescue), ordered by its `order`, and combined. The task
    metric and the timing are fakes, so only the search logic runs."""
    from dataclasses import dataclass

    from slimformer.compress.registry import STEPS, Knob, Step
    from slimformer.search import Search

    @dataclass
    class ToyOptions:
        strength: float = 0.0

    toy = Step("toy", ToyOptions, lambda model, opts, ctx: model, "test stand-in", role="structural",
               knob=Knob("strength", (0.1, 0.2, 0.4), identity=0.0), order=5, priority=-1)
    monkeypatch.setitem(STEPS, "toy", toy)
    assert family_grid(toy, tokens=65) == ["toy:strength=0.1", "toy:strength=0.2", "toy:strength=0.4"]
    assert join(["int8", "toy:strength=0.2"]) == "toy:strength=0.2+int8"

    s = Search(SearchConfig(model="vit-tiny", task="digits", max_drop=0.05, out=tmp_path, batch=2,
                            steps=["toy", "int8"], distill=False))
    s.base_ms, s.base_metric = 100.0, 1.0
    drop = {"toy:strength=0.1": 0.0, "toy:strength=0.2": 0.01, "toy:strength=0.4": 0.2, "toy:strength=0.3": 0.04}

    def fake(recipe: str) -> Candidate:
        parts = recipe.split("+")
        d = sum(drop.get(p, 0.0) for p in parts)
        latency = 100.0 * (1 - 2 * sum(float(p.split("=")[1]) for p in parts if p.startswith("toy")))
        latency *= 0.5 if any(p.startswith("int8") for p in parts) else 1.0
        return Candidate(recipe, 1.0 - d, d, latency if d <= 0.05 else None, d <= 0.05)

    tried = []
    monkeypatch.setattr(s, "evaluate", lambda recipe: tried.append(recipe) or fake(recipe))
    singles = s.singles(lambda c: None)
    assert tried[:4] == ["toy:strength=0.1", "toy:strength=0.2", "toy:strength=0.4", "toy:strength=0.3"]
    assert [c.recipe for c in singles["toy"]] == ["toy:strength=0.1", "toy:strength=0.2", "toy:strength=0.3"]
    combos = s.combine(singles, lambda c: None)
    assert any(c.recipe.startswith("toy:strength=0.3+int8") for c in combos)


def test_scoped_precision_only_on_encoder_decoder_models():
    """Precision steps that can be confined to one side are tried there where the model has both stacks
    (int8 on the decoder, bf16 on the encoder: read from each step's `scope` option), and nowhere else."""
    steps = all_steps()
    # one side alone comes first (milder than the whole model: the sweep stops at the first miss)
    assert family_grid(steps["int8"], tokens=65, seq2seq=True) == ["int8:scope=decoder"] + family_grid(
        steps["int8"], tokens=65)
    assert family_grid(steps["bf16"], tokens=65, seq2seq=True) == ["bf16:scope=encoder"] + family_grid(
        steps["bf16"], tokens=65)
    assert not [r for name in ("int8", "bf16") for r in family_grid(steps[name], tokens=65) if "scope" in r]
    for name in ("int8", "bf16"):
        for recipe in family_grid(steps[name], tokens=65, seq2seq=True):
            parse_recipe(recipe)
    parse_recipe("int8:scope=decoder+bf16:scope=encoder")


def test_steps_that_cannot_apply_are_left_out(tmp_path):
    """audio-trim says it applies to Whisper only: a search over a ViT leaves it out instead of spending
    candidates on a step that can only refuse; on a Whisper model it is in the space."""
    from test_ct2format import tiny_whisper

    from slimformer.search import Search

    steps = all_steps()
    assert steps["audio-trim"].applies(tiny_whisper()) and steps["audio-trim"].role == "tokens"
    s = Search(SearchConfig(model="vit-tiny", task="digits", max_drop=0.01, out=tmp_path,
                            steps=["audio-trim", "int8"]))
    assert set(s.steps) == {"int8"} and not s.seq2seq


def test_guarded_metrics_each_hold_the_budget(tmp_path):
    """A task's GUARDED metrics each count on their own (speech: clean and noisy word accuracy): a
    candidate whose mean holds but whose clean accuracy falls past the budget is outside it."""
    import types

    from slimformer.search import Search
    from slimformer.tasks import speech

    assert set(speech.GUARDED) == {"word_accuracy_clean", "word_accuracy_noisy"}
    s = Search(SearchConfig(model="vit-tiny", task="digits", max_drop=0.01, out=tmp_path, steps=["int8"]))
    s.base_metric = 0.70
    assert s.worst_drop({"accuracy": 0.71, "clean": 0.5}) == pytest.approx(-0.01)  # no guarded metrics
    s.task = types.SimpleNamespace(GUARDED=("clean", "noisy"))
    s.base_scores = {"clean": 0.82, "noisy": 0.55}
    assert s.worst_drop({"accuracy": 0.71, "clean": 0.81, "noisy": 0.60}) == pytest.approx(0.01)
    assert s.worst_drop({"accuracy": 0.69, "clean": 0.82, "noisy": 0.56}) == pytest.approx(0.01)


def test_confined_precision_settings_are_paired(tmp_path, monkeypatch):
    """One precision step on the decoder and another on the encoder are composed into one switch (stage 2
    holds one precision switch per recipe); two settings of the same step, or on the same side, are not."""
    from slimformer.search import Search

    s = Search(SearchConfig(model="vit-tiny", task="digits", max_drop=0.01, out=tmp_path, steps=["int8", "bf16"]))
    asked = []
    monkeypatch.setattr(s, "evaluate", lambda r: asked.append(r) or Candidate(r, 1.0, 0.0, 1.0, True))
    feasible = {"int8": [Candidate("int8:scope=decoder", 1.0, 0.0, 2.0, True), Candidate("int8", 1.0, 0.0, 1.5, True)],
                "bf16": [Candidate("bf16:scope=encoder", 1.0, 0.0, 2.5, True), Candidate("bf16", 1.0, 0.0, 2.2, True)]}
    s.confined_pairs(feasible, lambda c: None)
    assert asked == ["int8:scope=decoder+bf16:scope=encoder"]
    assert feasible["int8"][-1].recipe == asked[0]
