"""save -> load gives back exactly what was saved, for every registered step (patched forwards
included), on a reference model and on an in-memory Hugging Face model, with `save_model` writing the
recipe the model carries; a patched model without a record is refused rather than saved as fp32."""

import pytest
import torch

import slimformer
from slimformer import io
from slimformer.compress.attention_bf16 import _apply as apply_bf16_attention
from slimformer.compress.steps import all_steps, detected_steps
from slimformer.compress.tokens import TomeOptions, apply_tome, is_token_reduced
from slimformer.errors import SlimformerError
from slimformer.families.zoo import tiny
from tests.test_api import batches, output, reference

pytestmark = pytest.mark.usefixtures("one_thread")

# One setting per registered step that applies to tiny models (a new step must add its own here).
RECIPES = {
    "int8": "int8", "int8-weight": "int8-weight", "bf16": "bf16", "bf16-attention": "bf16-attention",
    "tome": "tome:r=2", "token-prune": "token-prune:keep_rate=0.7", "prune-heads": "prune-heads:ratio=0.5",
    "prune-ffn": "prune-ffn:ratio=0.5", "lowrank": "lowrank:rank=4", "prune-layers": "prune-layers:ratio=0.5",
    "distill": "prune-ffn:ratio=0.5+distill:epochs=1", "audio-trim": "audio-trim",
}
ONLY = {"audio-trim": ("whisper",)}  # steps of one layout: the round trip runs there
MODELS = {"reference": reference, "bert": lambda: tiny("bert"), "whisper": lambda: tiny("whisper")}
CASES = [(step, kind) for step in sorted(RECIPES) for kind in ONLY.get(step, ("reference", "bert"))]


def test_every_registered_step_has_a_round_trip():
    assert set(RECIPES) == set(all_steps())


@pytest.mark.parametrize("step, kind", CASES)
def test_save_load_gives_back_what_was_saved(step, kind, tmp_path):
    base = MODELS[kind]()
    model = slimformer.compress(base, RECIPES[step], calib=batches(base))
    io.save_model(model, tmp_path / "m")  # no recipe passed: the model's own record is written
    loaded = slimformer.load(tmp_path / "m")
    assert type(loaded) is type(model)
    assert [e["step"] for e in io.read_meta(tmp_path / "m")["recipe"]] == [e["step"] for e in model._slimformer_recipe]
    assert detected_steps(loaded) == detected_steps(model)  # patches and swapped modules came back
    assert torch.equal(output(loaded), output(model))
    io.save_model(loaded, tmp_path / "again")  # a loaded model carries its record too
    assert torch.equal(output(slimformer.load(tmp_path / "again")), output(model))


@pytest.mark.parametrize("kind", ["reference", "bert"])
def test_patched_model_without_a_record_is_refused(kind, tmp_path):
    model = apply_tome(MODELS[kind](), TomeOptions(r=1))
    assert is_token_reduced(model)
    with pytest.raises(SlimformerError, match="carries step.*tome"):
        io.save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    plain = apply_bf16_attention(MODELS[kind](), None, None)
    with pytest.raises(SlimformerError, match="bf16-attention"):
        io.save_model(plain, tmp_path / "m")
    io.save_model(plain, tmp_path / "m", recipe=[{"step": "bf16-attention", "options": {}}])  # said: saved
    assert detected_steps(slimformer.load(tmp_path / "m")) == ["bf16-attention"]


def test_dirs_saved_before_int8_weight_had_its_own_options_still_load(tmp_path):
    """int8 and int8-weight shared one options class; dirs written then record `activations` and
    `smoothing` for int8-weight, which its own class no longer takes."""
    import json

    model = slimformer.compress(reference(), "int8-weight")
    io.save_model(model, tmp_path / "m")
    meta_path = tmp_path / "m" / io.META
    meta = json.loads(meta_path.read_text())
    meta["recipe"][0]["options"].update(activations="dynamic", smoothing=0.75)
    meta_path.write_text(json.dumps(meta))
    assert torch.equal(output(slimformer.load(tmp_path / "m")), output(model))
