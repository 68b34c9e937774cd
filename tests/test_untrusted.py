"""Untrusted artifacts: nothing slimformer loads can execute code.

Model dirs load through safetensors + JSON only; pickles (`.bin`, `.pt`, `.pkl`, ...) are refused with a
message saying how to convert them; Hugging Face repository code (`auto_map`) is never run; recipes are
`yaml.safe_load`ed. The source itself is grepped so a future `torch.load` cannot slip in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slimformer import io
from slimformer.compress.recipe import parse_recipe
from slimformer.errors import SlimformerError

SRC = Path(__file__).parents[1] / "src" / "slimformer"

FORBIDDEN = [
    (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load without weights_only=True"),
    (r"\bpickle\.loads?\(|\bcPickle\b|\bdill\.load|\bjoblib\.load", "pickle/dill/joblib loading"),
    (r"trust_remote_code\s*=\s*True", "trust_remote_code=True"),
    (r"yaml\.load\((?![^)]*Loader\s*=\s*yaml\.SafeLoader)", "yaml.load without SafeLoader (use yaml.safe_load)"),
    (r"allow_pickle\s*=\s*True", "numpy allow_pickle=True"),
    (r"(?<![\w.])(eval|exec)\(", "eval/exec"),
]


def test_source_has_no_unsafe_loaders():
    hits = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in FORBIDDEN:
                if re.search(pattern, code):
                    hits.append(f"{path.relative_to(SRC.parent)}:{n}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_grep_patterns_can_fail(tmp_path):
    """The patterns above do match the unsafe forms (a grep that matches nothing proves nothing)."""
    bad = ["torch.load(f)", "torch.load(f, map_location='cpu')", "pickle.load(f)", "pickle.loads(b)",
           "AutoModel.from_pretrained(p, trust_remote_code=True)", "yaml.load(text)", "np.load(f, allow_pickle=True)",
           "eval(s)"]
    good = ["torch.load(f, weights_only=True)", "yaml.safe_load(text)", "model.eval()", "safe_open(p)"]
    assert all(any(re.search(p, b) for p, _ in FORBIDDEN) for b in bad)
    assert not any(re.search(p, g) for p, _ in FORBIDDEN for g in good)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "state.pkl", "x.ckpt"])
def test_pickle_files_refused_with_conversion_hint(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04\x95not loaded")
    with pytest.raises(SlimformerError, match=r"pickled weights are refused \(unpickling can run arbitrary code\); "
                                              "convert them to safetensors on a machine you trust"):
        io.load(path)


def test_hf_dir_with_only_pickles_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04\x95not loaded")
    with pytest.raises(SlimformerError, match=r"only pickled weights \(pytorch_model.bin\); slimformer loads "
                                              r"safetensors only.*save_pretrained\(dir, safe_serialization=True\)"):
        io.load(tmp_path)


def test_hf_remote_code_is_never_run(tmp_path):
    """A dir whose config asks for its own modeling code (`auto_map`): refused, and the code never ran."""
    marker = tmp_path / "PWNED"
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "evil-net", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}}))
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(SlimformerError, match="cannot load as a Hugging Face model"):
        io.load(tmp_path)
    assert not marker.exists()


def test_model_dir_meta_cannot_name_arbitrary_classes(tmp_path):
    """`hf_class` in slimformer.json must be a transformers nn.Module class, not any callable."""
    from slimformer.models import build_builtin

    d = io.save_model(build_builtin("vit-tiny"), tmp_path / "m")
    meta = json.loads((d / io.META).read_text())
    for cls in ("os.system", "AutoModel", "pipeline", "__import__"):
        meta.update({"architecture": "hf", "config": {"hf_config": {"model_type": "bert"}, "hf_class": cls}})
        (d / io.META).write_text(json.dumps(meta))
        with pytest.raises(SlimformerError, match="cannot rebuild Hugging Face model class"):
            io.load_model_dir(d)


def test_yaml_recipe_tags_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"steps:\n  - !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SlimformerError, match="not valid YAML"):
        parse_recipe(str(recipe))
    assert not marker.exists()


def test_partial_staging_dir_is_never_a_model(tmp_path):
    """A staging dir left by a killed save may hold complete-looking files; it is still refused."""
    from slimformer.models import build_builtin

    d = io.save_model(build_builtin("vit-tiny"), tmp_path / ".m.abc123.partial")
    with pytest.raises(SlimformerError, match="staging dir of an unfinished"):
        io.load(d)
