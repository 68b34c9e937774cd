"""The Python API keeps its promises: `compress_` changes the model you pass and says so, `compress` and
`evaluate` never do, the caller's calibration data is what data-driven steps see, and typed / inline /
YAML recipes are one recipe. On a reference model and on an in-memory Hugging Face model."""

import copy
import dataclasses

import pytest
import torch
import yaml

import slimformer
from slimformer import api, io
from slimformer.compress.prune import input_scores
from slimformer.compress.recipe import inline, parse_recipe, to_yaml
from slimformer.compress.registry import StepContext
from slimformer.compress.steps import all_steps
from slimformer.errors import SlimformerError
from slimformer.families import example_inputs, family_of
from slimformer.families.zoo import tiny
from slimformer.models import build_builtin
from slimformer.steps import Bf16Attention, Int8, Int8Weight, LowRank, PruneFFN, PruneHeads, TokenPrune, Tome

pytestmark = pytest.mark.usefixtures("one_thread")


def reference() -> torch.nn.Module:
    """vit-tiny with std-0.15 weights, so a step that does nothing cannot pass for one that works."""
    model = build_builtin("vit-tiny")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.15 if p.dim() >= 2 else 0.05)
    return model.eval()


MODELS = {"reference": reference, "hf-bert": lambda: tiny("bert")}


def batches(model, seeds=range(11, 15)) -> list:
    """Calibration batches as a user would pass them: tuples for positional models, dicts for HF ones."""
    out = []
    for seed in seeds:
        args, kwargs = example_inputs(model, batch=2, seq_len=10, seed=seed)
        out.append(kwargs if kwargs else args)
    return out


@torch.no_grad()
def output(model, seed: int = 99) -> torch.Tensor:
    args, kwargs = example_inputs(model, batch=2, seq_len=10, seed=seed)
    out = model(*args, **kwargs)
    return (out if isinstance(out, torch.Tensor) else out[0]).float()


@pytest.mark.parametrize("kind", MODELS)
def test_compress_in_place_returns_the_same_model(kind):
    model = MODELS[kind]()
    before = output(model)
    same = slimformer.compress_(model, [PruneFFN(ratio=0.5, score="weight")])
    assert same is model
    assert [e["step"] for e in model._slimformer_recipe] == ["prune-ffn"]
    assert output(model).shape == before.shape and not torch.equal(output(model), before)


@pytest.mark.parametrize("kind", MODELS)
def test_compress_copies_and_never_changes_its_argument(kind):
    model = MODELS[kind]()
    state = copy.deepcopy(model.state_dict())
    small = slimformer.compress(model, "prune-ffn:ratio=0.5,score=weight+tome:r=1")
    assert small is not model and not hasattr(model, "_slimformer_recipe")
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items()) and state.keys() == \
        model.state_dict().keys()
    assert family_of(model).ffn_sites(model)[0].fc1.linear("t").out_features > \
        family_of(small).ffn_sites(small)[0].fc1.linear("t").out_features
    # compressing the copy again builds on its record
    slimformer.compress_(small, "int8")
    assert [e["step"] for e in small._slimformer_recipe] == ["prune-ffn", "tome", "int8"]


def test_evaluate_never_changes_its_argument():
    model = reference().train()
    state = copy.deepcopy(model.state_dict())
    result = slimformer.evaluate(model, "digits", recipe=[PruneHeads(ratio=0.5, score="weight")])
    assert result["recipe"] == "prune-heads:ratio=0.5,score=weight" and "accuracy" in result["metrics"]
    assert model.training and model.blocks[0].attn.n_heads == build_builtin("vit-tiny").blocks[0].attn.n_heads
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())


def test_compress_path_to_dir_still_works(tmp_path):
    src = io.save_model(build_builtin("vit-tiny"), tmp_path / "src", files={"tokenizer.json": b'{"v": 1}'})
    small = slimformer.compress(src, "prune-ffn:ratio=0.5", out=tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_bytes() == b'{"v": 1}'
    assert [e["step"] for e in io.read_meta(out)["recipe"]] == ["prune-ffn"]
    loaded, x = io.load_model_dir(out), torch.randn(2, 1, 16, 16)
    assert loaded.blocks[0].mlp.fc1.out_features < build_builtin("vit-tiny").blocks[0].mlp.fc1.out_features
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


@pytest.mark.parametrize("kind", MODELS)
def test_user_calibration_data_is_what_scores_see(kind):
    """Scores from the caller's batches differ from scores on random inputs, and equal a second run on
    the same batches (the data really reaches the hooks)."""
    model = MODELS[kind]()
    sites = family_of(model).ffn_sites(model)
    slots = {s.name: (s.fc2, 1) for s in sites}
    mine = batches(model)
    for b in mine:  # a distribution random inputs do not have: constant images, one repeated token
        if isinstance(b, dict):
            b["input_ids"][:, 1:] = 7
        else:
            b[0].fill_(0.5)
    ctx = api.step_context(None, calib=api.calibration_inputs(model, mine))
    user = input_scores(model, slots, ctx, "prune-ffn")
    again = input_scores(model, slots, ctx, "prune-ffn")
    random = input_scores(model, slots, StepContext(), "prune-ffn")
    assert all(torch.equal(user[k], again[k]) for k in user)
    assert all(not torch.allclose(user[k], random[k], rtol=0.05) for k in user)


@pytest.mark.parametrize("kind", MODELS)
def test_static_int8_uses_the_callers_batches(kind):
    model = MODELS[kind]()
    with pytest.raises(SlimformerError, match="calib="):
        slimformer.compress(model, "int8:activations=static")
    small = slimformer.compress(model, [Int8(activations="static")], calib=batches(model, range(20, 28)))
    a, b = output(model), output(small)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98


def test_calibration_texts_are_tokenized_by_the_models_tokenizer():
    texts = ["The quick brown fox jumps over the lazy dog.", "In the beginning was the Word.", "A third line.",
             "Calibration needs a few real sentences, not random ids."]
    model = slimformer.load("minilm")
    (batch,) = api.calibration_inputs(model, texts, "minilm")
    assert set(batch) >= {"input_ids", "attention_mask"} and batch["input_ids"].shape[0] == len(texts)
    small = slimformer.compress(model, [Int8(activations="static")], calib=texts)
    enc = api.calibration_inputs(model, ["Fresh text the calibration never saw, for checking."])[0]
    with torch.no_grad():
        a, b = model(**enc).last_hidden_state, small(**enc).last_hidden_state
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95
    with pytest.raises(SlimformerError, match="vocabulary"):  # MiniLM's tokenizer for a 1k-word model: refused
        api.calibration_inputs(tiny("bert"), texts, "minilm")
    with pytest.raises(SlimformerError, match="not a Hugging Face text model"):
        api.calibration_inputs(reference(), texts)
    with pytest.raises(SlimformerError, match="must all be texts, or all model inputs"):
        api.calibration_inputs(reference(), [torch.zeros(1, 1, 16, 16), 3])


def test_compress_refuses_a_path_in_place():
    with pytest.raises(SlimformerError, match="slimformer.compress"):
        slimformer.compress_("vit-tiny", "int8")


TYPED = [
    ([PruneHeads(ratio=0.5, score="weight"), Tome(r=2), Int8(activations="static", smoothing=0.5)],
     "prune-heads:ratio=0.5,score=weight+tome:r=2+int8:activations=static,smoothing=0.5"),
    ([PruneFFN(ratio=0.25, multiple_of=8), LowRank(rank=8), TokenPrune(keep_rate=[0.9, 0.8], fuse=False),
      Bf16Attention(), Int8Weight(skip=["head", "pre*"])],
     "prune-ffn:multiple_of=8+lowrank:rank=8,energy=none+token-prune:keep_rate=0.9/0.8,fuse=False"
     "+bf16-attention+int8-weight:skip=head/pre*"),
    ([Tome(schedule="keep", keep_ratio=0.5)], "tome:schedule=keep,keep_ratio=0.5"),
]


@pytest.mark.parametrize("objects, text", TYPED)
def test_typed_inline_and_yaml_recipes_are_one_recipe(objects, text, tmp_path):
    typed, inl = parse_recipe(objects), parse_recipe(text)
    path = tmp_path / "r.yaml"
    path.write_text(to_yaml(typed, name="t"))
    from_yaml = parse_recipe(path)
    assert [s.to_dict() for s in typed] == [s.to_dict() for s in inl] == [s.to_dict() for s in from_yaml]
    assert inline(typed) == text and inline(parse_recipe(inline(typed))) == text
    doc = yaml.safe_load(path.read_text())
    assert doc["name"] == "t" and [next(iter(s)) for s in doc["steps"]] == [s.step.name for s in typed]
    mixed = parse_recipe([objects[0], *text.split("+")[1:]])  # configs and inline steps in one list
    assert [s.to_dict() for s in mixed] == [s.to_dict() for s in typed]


def test_every_step_has_its_own_config_class():
    import slimformer.steps as typed

    exported = {getattr(typed, n) for n in typed.__all__ if isinstance(getattr(typed, n), type)}
    for name, step in all_steps().items():
        assert step.options in exported, f"step {name!r}: options class not exported from slimformer.steps"
        assert typed.step_name(step.options()) == name
    assert len({s.options for s in all_steps().values()}) == len(all_steps())


@dataclasses.dataclass
class NotAStep:
    ratio: float = 0.5


def test_typed_configs_are_validated_like_text():
    with pytest.raises(SlimformerError, match="option 'activations' for step 'int8-weight'"):
        parse_recipe("int8-weight:activations=static")
    with pytest.raises(SlimformerError, match="NotAStep is not a step config"):
        parse_recipe([NotAStep()])
    with pytest.raises(SlimformerError, match="cannot come after 'int8'"):
        parse_recipe([Int8(), PruneFFN()])
