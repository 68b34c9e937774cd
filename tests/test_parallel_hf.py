"""Tensor, pipeline and data parallel on Hugging Face models (a Llama-style decoder and a BERT encoder), asked
of their families: 2 gloo processes match one process within 1e-5; the families' stage cuts and TP plans
checked in-process; what cannot be split is refused with the rule and the numbers."""

import time

import pytest
import torch

from slimformer.compress.distill import main_output
from slimformer.errors import SlimformerError
from slimformer.families import example_inputs, family_of, zoo
from slimformer.families.base import run_stage_parts
from slimformer.models import build_model
from slimformer.parallel.launch import LaunchConfig, launch
from slimformer.parallel.pipeline import validate_pp
from slimformer.parallel.tensor import validate_tp

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5


def close(diff: float, scale: float = 1.0) -> bool:
    """Within 1e-5, relative to the output's magnitude when it exceeds 1."""
    return diff <= TOL * max(1.0, scale)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in ("llama", "bert"):
        zoo.tiny(name).save_pretrained(root / name, safe_serialization=True)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def multi(hf_dirs):
    """One 2-process launch (start-up dominates): TP, PP (Llama on GPipe, BERT on 1F1B) and a DDP step for
    both models, an FSDP step for Llama."""
    models = [hf_dirs["llama"], hf_dirs["bert"]]
    pp = {"job": "pp", "microbatch_list": [2], "batch": 4, "seq_len": 8, "repeats": 1, "warmup": 0,
          "train_repeats": 1}
    ddp = {"job": "ddp", "task": "random", "batch": 2, "seq_len": 8, "check": True, "steps": 0}
    jobs = [
        {"job": "tp", "models": models, "batch": 2, "seq_len": 8, "repeats": 1, "warmup": 0},
        {**pp, "models": models[:1], "schedules": ["gpipe"]},
        {**pp, "models": models[1:], "schedules": ["1f1b"]},
        {**ddp, "model": models[0], "check_modes": ["ddp", "fsdp"]},
        {**ddp, "model": models[1], "check_modes": ["ddp"]},
    ]
    start = time.time()
    result = launch("multi", {"jobs": jobs}, LaunchConfig(nproc=2, quiet=True))
    print(f"hf multi launch: {time.time() - start:.1f} s")
    return result["results"]


def test_tensor_parallel_hf_matches_single_process(multi, hf_dirs):
    rows = multi[0]["results"]
    assert [r["model"] for r in rows] == [hf_dirs["llama"], hf_dirs["bert"]]
    for r in rows:
        assert r["max_abs_output"] > 0.1, r  # std 0.15 weights: a real signal to compare
        assert close(r["max_abs_diff_output"], r["max_abs_output"]), r
        assert r["max_abs_diff_weights_after_step"] <= TOL, r


def test_pipeline_parallel_hf_matches_single_process(multi, hf_dirs):
    rows = multi[1]["results"] + multi[2]["results"]
    assert [(r["model"], r["schedule"]) for r in rows] == [(hf_dirs["llama"], "gpipe"), (hf_dirs["bert"], "1f1b")]
    for r in rows:
        assert close(r["max_abs_diff_output"], r["max_abs_output"]), r
        assert r["max_abs_diff_weights_after_step"] <= TOL, r


def test_ddp_and_fsdp_hf_step_equal_single_process_step(multi):
    llama, bert = multi[3:]
    assert set(llama["check"]) == {"ddp", "fsdp"} and set(bert["check"]) == {"ddp"}
    for job in (llama, bert):  # BERT's pooler gets no gradient: DDP must still average every bucket
        assert job["global_batch"] == 2 * job["batch_per_rank"]
        for mode, check in job["check"].items():
            assert check["max_abs_diff_weights_after_step"] <= TOL, (job["model"], mode, check)


def reference_model(name: str) -> torch.nn.Module:
    """A toy reference model with weights at std 0.15 (a wrong cut then visibly changes the output)."""
    text = {"vocab_size": 64, "max_len": 16, "d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2}
    vit = {"image_size": 16, "patch_size": 4, "in_channels": 1, "d_model": 32, "n_heads": 4, "d_ff": 64,
           "n_layers": 2, "n_classes": 10}
    model = build_model(name, vit if name == "vit" else text)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
    return model


@pytest.mark.parametrize("name", ["llama", "llama-base", "bert", "vit", "encoder", "decoder"])
def test_stage_parts_run_the_whole_model_exactly(name):
    """The family's cut, run in one process (embed, every block, head), is the model's own forward,
    padded rows included: what each pipeline stage runs is the model's code, nothing re-derived."""
    if name.startswith(("llama", "bert")):
        model = zoo.tiny(name.split("-")[0])
        model = model.model if name == "llama-base" else model
    else:
        model = reference_model(name)
    model.eval()
    args, kwargs = example_inputs(model, batch=3, seq_len=8, seed=3)
    if "attention_mask" in kwargs:
        kwargs["attention_mask"][0, 5:] = 0
    elif len(args) > 1:
        args[1][0, 5:] = False
    parts = family_of(model).stage_parts(model)
    with torch.no_grad():
        expected = main_output(model(*args, **kwargs))
        got = run_stage_parts(model, parts, args, kwargs)
    assert expected.abs().max() > 0.1
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()


def test_tp_plan_from_sites():
    llama = zoo.tiny("llama")
    plan = family_of(llama).tp_plan(llama, 2)
    layer = "model.layers.0"
    assert {k: v for k, v in plan.items() if k.startswith(layer + ".")} == {
        f"{layer}.self_attn.q_proj": "colwise", f"{layer}.self_attn.k_proj": "colwise",
        f"{layer}.self_attn.v_proj": "colwise", f"{layer}.self_attn.o_proj": "rowwise",
        f"{layer}.mlp.gate_proj": "colwise", f"{layer}.mlp.up_proj": "colwise", f"{layer}.mlp.down_proj": "rowwise"}
    assert len(plan) == 2 * 7


@pytest.mark.parametrize("name, degree, message", [
    ("gpt2", 2, "transformer.h.0.attn projects q, k and v with one fused layer (transformer.h.0.attn.c_attn)"),
    ("bert", 3, "encoder.layer.0.attention: number of heads 4 must be divisible by the tensor-parallel degree 3"),
    ("llama", 4, "number of key/value heads 2 (shared by 4 query heads) must be divisible by the tensor-parallel "
                 "degree 4"),
    ("t5", 2, "adds a per-head table"),
])
def test_tp_refusals_state_the_rule_and_numbers(name, degree, message):
    model = zoo.tiny(name)
    with pytest.raises(SlimformerError, match="tensor parallel") as e:
        validate_tp(model, degree)
    assert message in str(e.value)


def test_pp_refusals_name_the_reason():
    with pytest.raises(SlimformerError, match="two stacks"):
        validate_pp(zoo.tiny("t5"), 2, 2, 4, "gpipe")
    import transformers

    cls = transformers.BertForSequenceClassification(zoo.tiny("bert").config)
    with pytest.raises(SlimformerError, match="BertForSequenceClassification .bert layout. has no pipeline split"):
        validate_pp(cls, 2, 2, 4, "gpipe")
