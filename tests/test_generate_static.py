"""Static KV cache and compiled decode step: same tokens and logits as the growing cache and no cache.

Graph counting uses dynamo's `CompileCounter` backend (traces with dynamo, runs eagerly: counts graphs
without paying inductor's compile time); one test runs the real inductor step against eager.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from slimformer.errors import SlimformerError
from slimformer.generate import beam_search, compiled_step, decode_step, greedy, lm_greedy, pad_batch
from slimformer.models.decoder import Decoder, DecoderConfig
from slimformer.models.seq2seq import Seq2Seq, Seq2SeqConfig

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 40


def spread(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random weights at std 0.2 (every matrix and bias), so a broken step changes the tokens."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std) if p.ndim >= 2 else p.normal_(0, std / 4)
    return model.eval()


def seq2seq(max_len: int = 24, seed: int = 0, eos_boost: float = 3.0) -> Seq2Seq:
    torch.manual_seed(seed)
    model = spread(Seq2Seq(Seq2SeqConfig(vocab_size=VOCAB, max_len=max_len, d_model=32, n_enc_layers=2,
                                         n_dec_layers=2, n_heads=4, d_ff=64)))
    with torch.no_grad():  # EOS likelier (varied lengths) or, with boost 0, never chosen (full-length decodes)
        model.encoder.tok_emb.weight[model.config.eos_id] *= eos_boost
    return model


def sources(n: int, longest: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]


@pytest.fixture(scope="module")
def setup():
    model = seq2seq()
    srcs = sources(6, 12, seed=1)
    return model, srcs, pad_batch(srcs, model.config.pad_id)


def test_static_greedy_equals_growing_and_no_cache(setup):
    model, _, src = setup
    growing = greedy(model, src)
    assert greedy(model, src, static=True) == growing == greedy(model, src, use_cache=False)
    assert len({len(s) for s in growing}) > 1, "test needs rows that end at different steps"


def test_static_logits_equal_full_prefix_logits(setup):
    """Teacher-forced: the static cache's step logits equal one full causal pass, at every position."""
    model, _, src = setup
    c = model.config
    tgt = torch.cat([torch.full((src.shape[0], 1), c.bos_id), torch.randint(3, VOCAB, (src.shape[0], 9))], 1)
    with torch.no_grad():
        memory, bias = model.encode(src)
        full, _ = model.decode(tgt, memory, bias)
        cache = model.decoder.static_cache(src.shape[0], c.max_len, memory)
        steps = [decode_step(model.decoder, tgt[:, t:t + 1], torch.tensor([t]), cache, bias)
                 for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=0, atol=1e-5)


def test_static_prefill_then_steps_equal_growing(setup):
    """Several tokens written at once (a prompt) then one at a time: the positions decide what is seen."""
    model, _, src = setup
    c = model.config
    tgt = torch.randint(3, VOCAB, (src.shape[0], 8))
    with torch.no_grad():
        memory, bias = model.encode(src)
        full, _ = model.decode(tgt, memory, bias)
        cache = model.decoder.static_cache(src.shape[0], c.max_len, memory)
        first, _ = model.decode(tgt[:, :5], None, bias, cache, torch.arange(5))
        rest = [model.decode(tgt[:, t:t + 1], None, bias, cache, torch.tensor([t]))[0] for t in range(5, 8)]
    torch.testing.assert_close(torch.cat([first, *rest], 1), full, rtol=0, atol=1e-5)


def test_finished_rows_masked_equal_per_sentence(setup):
    model, srcs, src = setup
    one = [greedy(model, torch.tensor([s]))[0] for s in srcs]
    assert greedy(model, src, static=True) == one
    one_beam = [beam_search(model, torch.tensor([s]), beam=3)[0] for s in srcs]
    assert beam_search(model, src, beam=3, static=True) == one_beam


def test_static_beam_equals_growing_beam_and_beam_one_greedy(setup):
    model, _, src = setup
    assert beam_search(model, src, beam=4, static=True) == beam_search(model, src, beam=4)
    assert beam_search(model, src, beam=1, static=True) == greedy(model, src, static=True)


def test_no_recompilation_over_a_64_token_decode():
    """One graph for a 64-step decode (positions are tensors, shapes fixed); a new source length reuses
    it (the memory is padded to full length); only a new batch size adds one."""
    model = seq2seq(max_len=72, eos_boost=0.0)
    counter = CompileCounter()
    src = pad_batch(sources(3, 10, seed=2), model.config.pad_id)
    out = greedy(model, src, max_new_tokens=64, static=True, compiled=counter)
    assert [len(s) for s in out] == [64] * 3, "test needs full-length decodes"
    assert out == greedy(model, src, max_new_tokens=64)
    assert counter.frame_count == 1
    greedy(model, src[:, :4], max_new_tokens=64, static=True, compiled=counter)
    assert counter.frame_count == 1
    greedy(model, src[:2], max_new_tokens=5, static=True, compiled=counter)
    assert counter.frame_count == 2


@pytest.mark.slow
def test_inductor_step_equals_eager(setup):
    """The real compiled step (inductor, frozen weights): same greedy tokens, logits within 1e-4."""
    model, _, src = setup
    c = model.config
    assert greedy(model, src, static=True, compiled=True) == greedy(model, src)
    with torch.no_grad():
        memory, bias = model.encode(src)
        from slimformer.generate import _pad_memory

        memory, bias = _pad_memory(memory, bias, c.max_len)
        caches = [model.decoder.static_cache(src.shape[0], c.max_len, memory) for _ in range(2)]
        tokens = torch.randint(3, VOCAB, (src.shape[0], 1))
        for t in range(3):
            pos = torch.tensor([t])
            eager = decode_step(model.decoder, tokens, pos, caches[0], bias)
            fast = compiled_step()(model.decoder, tokens, pos, caches[1], bias)
            torch.testing.assert_close(fast, eager, rtol=0, atol=1e-4)
            tokens = eager.argmax(-1, keepdim=True)


def test_lone_decoder_static_equals_growing():
    torch.manual_seed(0)
    dec = spread(Decoder(DecoderConfig(vocab_size=VOCAB, max_len=80, d_model=32, n_layers=2, n_heads=4, d_ff=64)))
    prompt = torch.randint(0, VOCAB, (2, 5))
    counter = CompileCounter()
    growing = lm_greedy(dec, prompt, 64)
    assert torch.equal(lm_greedy(dec, prompt, 64, static=True), growing)
    assert torch.equal(lm_greedy(dec, prompt, 64, static=True, compiled=counter), growing)
    assert counter.frame_count == 1
    with torch.no_grad():  # the growing cache's logits, step by step, equal one full pass
        seq = torch.cat([prompt, growing], 1)
        full, _ = dec(seq)
        cache = dec.static_cache(2)
        first, _ = dec(seq[:, :5], cache=cache, pos=torch.arange(5))
        rest = [decode_step(dec, seq[:, t:t + 1], torch.tensor([t]), cache, None) for t in range(5, seq.shape[1])]
    torch.testing.assert_close(torch.cat([first[:, :, :], torch.stack(rest, 1)], 1), full, rtol=0, atol=1e-5)


def test_bad_requests_say_what_is_valid(setup):
    model, _, src = setup
    with pytest.raises(SlimformerError, match="needs static=True"):
        greedy(model, src, compiled=True)
    with pytest.raises(SlimformerError, match="use_cache=False"):
        greedy(model, src, static=True, use_cache=False)
    with pytest.raises(SlimformerError, match="positions"):
        model.decode(src[:, :1], None, None, model.decoder.static_cache(src.shape[0]))
    with pytest.raises(SlimformerError, match="static cache length"):
        model.decoder.static_cache(1, model.config.max_len + 1)


# Whisper is left out: its generate() has its own prompt/timestamp logic and the tiny random model
# emits one token forever, so equality there could not fail.
@pytest.mark.parametrize("name", ["gpt2", "llama", "marian", "bart", "t5"])
def test_hf_static_cache_and_compiled_forward_equal_dynamic(name):
    """transformers' StaticCache, eager and compiled (dynamo, graphs counted), gives the dynamic cache's
    greedy tokens; a 24-token decode compiles one graph (positions are tensors)."""
    from slimformer.families import zoo
    from slimformer.generate import compiled_graphs, hf_greedy

    model = zoo.tiny(name)
    inputs = {"input_ids": torch.randint(3, 900, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    n = 24
    dynamic = hf_greedy(model, inputs, n)
    assert dynamic.shape == (2, n) and len(set(dynamic.flatten().tolist())) > 1
    assert torch.equal(hf_greedy(model, inputs, n, static=True), dynamic)
    before = compiled_graphs()
    assert torch.equal(hf_greedy(model, inputs, n, static=True, compiled="eager"), dynamic)
    assert compiled_graphs() - before == 1


def test_int8_decode_kernels_match_fp32_and_keep_recipe_weights():
    """Both int8 kernels compute the float Linear within int8 rounding; converting an `int8`-step
    Linear keeps its int8 weights exactly."""
    import logging

    from slimformer.compress.int8_decode import DecodeInt8Linear, for_decoding
    from slimformer.compress.quantize import Int8Linear

    logging.getLogger("torchao").setLevel(logging.ERROR)
    lin = torch.nn.Linear(64, 48)
    torch.nn.init.normal_(lin.weight, std=0.2)
    x = torch.randn(3, 5, 64)
    lin.requires_grad_(False)
    ref = lin(x)
    for mode in ("int8x8", "weight-only", "auto"):
        y = DecodeInt8Linear.from_float(lin, mode)(x)
        assert y.shape == ref.shape
        assert float((y - ref).abs().max() / ref.abs().max()) < 0.02, mode
    holder = torch.nn.Sequential(Int8Linear.from_linear(lin, dynamic=True))
    q = holder[0].weight.qdata.clone()
    for_decoding(holder)
    assert isinstance(holder[0], DecodeInt8Linear) and torch.equal(holder[0].weight_int8, q)
    assert float((holder(x) - ref).abs().max() / ref.abs().max()) < 0.02


def test_int8_decoding_static_equals_growing(setup):
    """The int8 decode kernels are the same function on either cache (identical tokens)."""
    import copy

    from slimformer.compress.int8_decode import for_decoding

    model, _, src = setup
    int8 = for_decoding(copy.deepcopy(model))
    assert greedy(int8, src, static=True) == greedy(int8, src)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["generate.py"])
def test_benchmark_tiny_runs(tmp_path, script):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / script
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = bench
    spec.loader.exec_module(bench)
    report = bench.main(["--tiny", "--out-dir", str(tmp_path)])
    assert (tmp_path / "generate-tiny.json").exists() and (tmp_path / "generate-tiny.md").exists()
    assert all(m["compiled_fp32_tokens_equal_hf_generate"] for m in report["models"].values())
    assert {r["name"] for r in report["results"]} >= {"hf generate (dynamic cache)", "ctranslate2 int8",
                                                     "slimformer int8 (static cache, compiled)"}
