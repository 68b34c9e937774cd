"""`--recipe fast` / `small` resolve by task and CPU features (detection faked here), to concrete recipes."""

from __future__ import annotations

import pytest

from slimformer import cpu
from slimformer.bench.env import environment, features_line
from slimformer.compress.presets import PICKS, resolve
from slimformer.compress.recipe import parse_recipe

AMX = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
AVX2 = frozenset({"avx2"})


@pytest.fixture
def flags(monkeypatch):
    def fake(which: frozenset[str]) -> None:
        monkeypatch.setattr(cpu, "read_cpu_flags", lambda: which)
    return fake


def test_fast_resolves_differently_with_and_without_amx(flags):
    flags(AMX)
    amx = resolve("fast", "embedding")
    amx_steps = [s.step.name for s in parse_recipe("fast", "embedding")]
    flags(VNNI)
    vnni = resolve("fast", "embedding")
    vnni_steps = [s.step.name for s in parse_recipe("fast", "embedding")]
    assert amx.recipe != vnni.recipe
    assert amx_steps == ["bf16"] and vnni_steps == ["bf16-attention", "int8"]
    assert amx.kind == "amx" and "AMX" in amx.measured_on
    assert vnni.kind == "avx512-vnni" and "no AMX" in vnni.measured_on
    assert parse_recipe("fast", "embedding")[-1].options.activations == "static"


def test_unmeasured_kind_gets_a_labelled_rule_never_another_kinds_pick(flags):
    flags(AVX2)
    pick = resolve("fast", "embedding")
    assert pick.measured_on.startswith("rule, not measured")
    assert all(pick != p for p in PICKS)
    flags(AMX)
    assert resolve("fast", "digits").measured_on.startswith("rule, not measured")  # only MiniLM measured on AMX
    assert resolve("fast", None).recipe == "bf16:compile=true"
    flags(VNNI)
    assert resolve("fast", None).recipe == "int8:compile=true"  # no task: no calibration data, dynamic int8


def test_every_pick_parses_and_names_its_cpu():
    for p in PICKS:
        parse_recipe(p.recipe)
        assert p.measured_on and ("AMD" in p.measured_on or "Intel" in p.measured_on)


def test_environment_records_the_faked_features(flags):
    flags(VNNI)
    env = environment()
    assert env["cpu_features"]["avx512_vnni"] and not env["cpu_features"]["amx_bf16"]
    assert env["cpu_kind"] == "avx512-vnni" and isinstance(env["cpu_features"]["cores"], int)
    line = features_line(env)
    assert "AVX512-VNNI" in line and "no AMX-BF16" in line
    flags(AMX)
    assert "kind amx" in features_line(environment())


def test_compress_records_the_concrete_recipe(tmp_path, flags):
    from slimformer import api, io

    flags(VNNI)
    out = tmp_path / "small"
    api.compress("vit-tiny", "small", out=out)
    assert [e["step"] for e in io.read_meta(out)["recipe"]] == ["int8"]
    assert "small" not in (out / io.META).read_text()
