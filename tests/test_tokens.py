"""tome / token-prune patched into every supported model family: exactness, padding, steps, errors."""

import copy

import pytest
import torch

from slimformer import api, io
from slimformer.compress.token_patch import TokenReducer, reducer_of, run_blocks, token_sizes, unpatch
from slimformer.compress.tokens import PruneOptions, TomeOptions, apply_prune, apply_tome
from slimformer.errors import SlimformerError
from slimformer.models import EncoderConfig, Seq2SeqConfig, ViTConfig, build_model

TOL = 1e-5


def small_vit():
    return build_model("vit", ViTConfig(image_size=16, patch_size=2, in_channels=1, n_classes=10, d_model=32,
                                        n_layers=3, n_heads=4, d_ff=64)).eval()


def small_encoder():
    return build_model("encoder", EncoderConfig(vocab_size=100, max_len=32, d_model=32, n_layers=3, n_heads=4,
                                                d_ff=64)).eval()


def small_seq2seq():
    return build_model("seq2seq", Seq2SeqConfig(vocab_size=100, max_len=32, d_model=32, n_enc_layers=3,
                                                n_dec_layers=2, n_heads=4, d_ff=64)).eval()


def small_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    return BertModel(cfg).eval()


def small_hf_vit():
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTModel

    cfg = HFViTConfig(image_size=16, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=3,
                      num_attention_heads=4, intermediate_size=64, attn_implementation="sdpa")
    return ViTModel(cfg).eval()


def text_batch(seed=0):
    """Token ids `[3, 20]` with two padded rows (pad id 0) and the matching mask."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 100, (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 13:] = False
    mask[2, 7:] = False
    return tokens.masked_fill(~mask, 0), mask


def run(model, inputs):
    with torch.inference_mode():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return getattr(out, "last_hidden_state", out)


def cases():
    tokens, mask = text_batch()
    return {
        "vit": (small_vit, (torch.randn(2, 1, 16, 16),)),
        "encoder": (small_encoder, (tokens, mask)),
        "seq2seq": (small_seq2seq, (tokens, tokens[:, :6])),
        "hf-bert": (small_bert, {"input_ids": tokens, "attention_mask": mask.long()}),
        "hf-vit": (small_hf_vit, {"pixel_values": torch.randn(2, 1, 16, 16)}),
    }


@pytest.mark.parametrize("family", list(cases()))
def test_identity_settings_are_bit_identical_and_unpatch_restores(family):
    factory, inputs = cases()[family]
    model = factory()
    before = dict(vars(model))
    ref = run(model, inputs)
    for patch in (lambda m: apply_tome(m, TomeOptions(r=0)), lambda m: apply_prune(m, PruneOptions(keep_rate=1.0))):
        patch(model)
        assert torch.equal(run(model, inputs), ref)
    apply_tome(model, TomeOptions(r=2))
    changed = run(model, inputs)
    assert changed.shape != ref.shape or not torch.allclose(changed, ref)
    unpatch(model)
    assert vars(model).keys() == before.keys() and token_sizes(model) is None
    assert torch.equal(run(model, inputs), ref)


def test_duplicated_tokens_merged_with_proportional_attention_equal_the_original():
    """Merging exact duplicates with size 2 and log-size bias must not change any output."""
    model = small_vit()
    with torch.inference_mode():
        x = model.embed(torch.randn(1, 1, 16, 16))
        t = x.shape[1]
        dup = torch.zeros(t, dtype=torch.bool)
        dup[torch.randperm(t - 1)[:20] + 1] = True
        idx = [i for i in range(t) for _ in range(2 if dup[i] else 1)]
        first = [j for j in range(len(idx)) if j == 0 or idx[j] != idx[j - 1]]
        ref = x[:, idx]
        for block in model.blocks:
            ref = block(ref)
        ref = ref[:, first]
        errors = {}
        for prop in (True, False):
            red = TokenReducer("tome", 3, prop_attn=prop, r=[int(dup.sum()), 0, 0])
            protected = torch.zeros(1, len(idx), dtype=torch.bool)
            protected[0, 0] = True
            red.begin(torch.ones(1, len(idx)), protected, None)
            out = run_blocks(model.blocks, x[:, idx], red)
            assert out.shape == ref.shape and red.size.max() == 2
            errors[prop] = float((out - ref).abs().max())
    assert errors[True] <= TOL
    assert errors[False] > 100 * TOL  # without proportional attention the duplicates over-count


@pytest.mark.parametrize("family", ["encoder", "seq2seq", "hf-bert"])
@pytest.mark.parametrize("recipe", ["tome:r=3", "token-prune:keep_rate=0.6"])
def test_padded_batch_equals_single_examples(family, recipe):
    factory, _ = cases()[family]
    model, _ = api.compress_model(factory(), recipe)
    tokens, mask = text_batch(1)

    def call(t, m, rows):
        if family == "encoder":
            return run(model, (t, m))
        if family == "seq2seq":
            return run(model, (t, tokens[rows, :6]))
        return run(model, {"input_ids": t, "attention_mask": m.long()})

    batched = call(tokens, mask, slice(None))
    sizes = token_sizes(model)
    for i in range(3):
        n = int(mask[i].sum())
        single = call(tokens[i:i + 1, :n], mask[i:i + 1, :n], slice(i, i + 1))
        k = single.shape[1]
        scale = single.abs().max()
        assert torch.allclose(batched[i, :k], single[0], atol=TOL * scale), (batched[i, :k] - single[0]).abs().max()
        if family != "seq2seq":
            assert torch.equal(sizes[i, k:], torch.zeros_like(sizes[i, k:]))
            assert sizes[i].sum() == n  # pooling with sizes stays a mean over the original tokens


def test_special_tokens_are_never_merged_in_bert():
    model = small_bert()
    apply_tome(model, TomeOptions(schedule="keep", keep_ratio=0.2))
    tokens, mask = text_batch(2)
    out = run(model, {"input_ids": tokens, "attention_mask": mask.long()})
    sizes = token_sizes(model)
    for i in range(3):
        live = int((sizes[i] > 0).sum())
        assert sizes[i, 0] == 1 and sizes[i, live - 1] == 1  # [CLS] first, [SEP] last, both alone
    assert out.shape[1] < tokens.shape[1]


def test_seq2seq_decodes_from_merged_memory():
    model, _ = api.compress_model(small_seq2seq(), "tome:r=3")
    tokens, mask = text_batch(3)
    with torch.inference_mode():
        memory, bias = model.encode(tokens)
        logits, _ = model.decode(tokens[:, :4], memory, bias)
    assert memory.shape[1] < tokens.shape[1] and bias.shape == (3, 1, 1, memory.shape[1])
    assert torch.isfinite(logits).all()


def test_saved_model_dir_reloads_patched(tmp_path):
    for factory, inputs, recipe in ((small_vit, (torch.randn(2, 1, 16, 16),), "tome:r=4,prop_attn=false"),
                                    (small_bert, {"input_ids": text_batch()[0]}, "token-prune:keep_rate=0.5")):
        model, record = api.compress_model(factory(), recipe)
        ref = run(model, inputs)
        io.save_model(model, tmp_path / recipe, recipe=record)
        loaded = io.load_model_dir(tmp_path / recipe)
        assert torch.equal(run(loaded, inputs), ref)
        assert token_sizes(loaded) is not None
        twin = copy.deepcopy(loaded)  # copies carry their own patch
        unpatch(loaded)
        assert torch.equal(run(twin, inputs), ref)


@pytest.mark.parametrize(("recipe", "words"), [
    ("tome:r=20", ["'r'", "r=20", "largest constant r", "16"]),
    ("tome:r=1/2", ["'r'", "2 values", "3 blocks"]),
    ("tome:schedule=keep,keep_ratio=0.1", ["'keep_ratio'", "0.125"]),
    ("tome:schedule=keep", ["'keep_ratio'", "(0, 1]"]),
    ("tome:keep_ratio=0.5", ["'keep_ratio'", "schedule=keep"]),
    ("token-prune:keep_rate=0", ["'keep_rate'", "(0, 1]"]),
    ("token-prune:keep_rate=1.5", ["'keep_rate'", "(0, 1]"]),
    ("token-prune:start_layer=3", ["'start_layer'", "< 3"]),
    ("tome+token-prune", ["tome", "token-prune"]),
])
def test_bad_options_name_the_option_and_the_limit(recipe, words):
    with pytest.raises(SlimformerError) as e:
        api.compress_model(small_vit(), recipe)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_unsupported_model_is_refused():
    from slimformer.models import DecoderConfig

    decoder = build_model("decoder", DecoderConfig(vocab_size=100, max_len=16, d_model=32, n_layers=1, n_heads=4,
                                                   d_ff=64))
    with pytest.raises(SlimformerError, match="Decoder is a causal decoder"):
        api.compress_model(decoder, "tome:r=2")


@pytest.mark.parametrize("opts", [TomeOptions(r=2), TomeOptions(r=7), TomeOptions(r=12),
                                  TomeOptions(schedule="keep", keep_ratio=0.3)])
def test_vit_static_merge_path_equals_the_general_path(monkeypatch, opts):
    """The reference ViT takes the static-shape `uniform_merge` (compilable); forcing the general
    per-row path on the same images gives the same logits."""
    model = apply_tome(small_vit(), opts)
    images = torch.randn(4, 1, 16, 16)
    fast = run(model, (images,))
    begin = TokenReducer.begin
    monkeypatch.setattr(TokenReducer, "begin", lambda self, *a: begin(self, *a[:3], None))
    general = run(model, (images,))
    assert torch.allclose(fast, general, atol=TOL), (fast - general).abs().max()


@pytest.mark.parametrize("opts", [TomeOptions(r=3), TomeOptions(schedule="keep", keep_ratio=0.4)])
def test_unpadded_bert_takes_the_static_path_and_equals_the_general_path(monkeypatch, opts):
    """A batch without padding merges on the static-shape path ([CLS] and [SEP] kept); forcing the
    general per-row path on the same batch gives the same hidden states and sizes. A padded batch
    keeps the general path."""
    model = apply_tome(small_bert(), opts)
    tokens = torch.randint(3, 100, (3, 20), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    fast, fast_sizes = run(model, inputs), token_sizes(model).clone()
    assert reducer_of(model).merges is not None and fast.shape[1] < 20
    assert (fast_sizes[:, 0] == 1).all() and (fast_sizes[:, -1] == 1).all()
    begin = TokenReducer.begin
    monkeypatch.setattr(TokenReducer, "begin", lambda self, *a, **k: begin(self, *a[:3], None))
    general = run(model, inputs)
    assert reducer_of(model).merges is None
    assert torch.allclose(fast, general, atol=TOL), (fast - general).abs().max()
    assert torch.equal(fast_sizes, token_sizes(model))
    monkeypatch.undo()
    padded, mask = text_batch()
    run(model, {"input_ids": padded, "attention_mask": mask.long()})
    assert reducer_of(model).merges is None


def test_two_compiled_vits_with_different_plans_compile_and_match():
    """Each patched ViT carries its plan as a module constant: compiling a second model whose plan
    differs must not turn the merge counts into symbolic ints (inductor failed on exactly that)."""
    images = torch.randn(2, 1, 16, 16)
    for recipe in ("tome:schedule=keep,keep_ratio=0.3", "tome:schedule=keep,keep_ratio=0.25"):
        torch.manual_seed(0)
        model = api.compress_model(small_vit(), recipe)[0]
        expected = run(model, (images,))
        model.compile(options={"freezing": True})
        assert torch.allclose(run(model, (images,)), expected, atol=1e-4)


def test_two_compiled_berts_merge_unpadded_batches_and_match():
    """Unpadded text under torch.compile: the static plan comes from a module constant, so two models
    with different keep ratios both compile, merge, and equal their eager outputs."""
    tokens = torch.randint(3, 100, (2, 24), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    for recipe in ("tome:schedule=keep,keep_ratio=0.5", "tome:schedule=keep,keep_ratio=0.4"):
        torch.manual_seed(0)
        model = api.compress_model(small_bert(), recipe)[0]
        expected = run(model, inputs)
        model.compile(options={"freezing": True})
        got = run(model, inputs)
        assert got.shape == expected.shape and got.shape[1] < 24
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
