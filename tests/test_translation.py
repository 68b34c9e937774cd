"""The translation task on real verses at toy sizes: tokenizer, training/checkpoint, bad input, CLI, benchmark."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from slimformer import io
from slimformer.errors import SlimformerError
from slimformer.generate import greedy, pad_batch
from slimformer.tasks import translation as T

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(bible_pairs):
    """A 600-token tokenizer trained on 400 real training pairs."""
    from slimformer.data import bible

    train = bible.split_pairs(bible_pairs)["train"][:400]
    return T.train_tokenizer([p.en for p in train] + [p.es for p in train], vocab_size=600)


@pytest.fixture(scope="module")
def model_dir(small, tmp_path_factory, bible_pairs):
    out = tmp_path_factory.mktemp("tr") / "model"
    config = replace(T.MODEL_CONFIG, vocab_size=small.get_vocab_size(), d_model=32, n_enc_layers=1,
                     n_dec_layers=1, d_ff=64, max_len=24)
    T.train(out=out, minutes=0.05, limit=64, config=config, tok=small, max_tokens=400)
    return out


def test_tokenizer_shares_specials_and_encodes_any_character(small):
    assert [small.token_to_id(t) for t in T.SPECIALS] == [0, 1, 2]
    text = "Señor, ¿dónde? — 東京 🙂 ∑"
    ids = small.encode(text, add_special_tokens=False).ids
    assert small.decode(ids).strip() == text  # byte-level: nothing is <unk>


def test_long_sources_are_truncated_to_the_positions(small):
    (ids,) = T.encode_sources(small, ["word " * 500], max_len=40)
    assert len(ids) == 40 and ids[-1] == small.token_to_id("</s>")


def test_training_writes_a_reloadable_model_dir_with_tokenizer(model_dir, small):
    assert (model_dir / T.TOKENIZER_FILE).exists()
    meta = io.read_meta(model_dir)
    assert meta["task"] == "translation" and meta["train"]["steps"] >= 1
    model = io.load(model_dir)
    tok = T.load_tokenizer(model_dir)
    assert tok.get_vocab() == small.get_vocab()
    src = pad_batch(T.encode_sources(tok, ["In the beginning.", "Jesus wept."], 24), 0)
    assert greedy(model, src, use_cache=True) == greedy(model, src, use_cache=False)


def test_translate_handles_bad_input_without_crashing(model_dir):
    model, tok = io.load(model_dir), T.load_tokenizer(model_dir)
    texts = ["", "   ", "word " * 300, "東京 🙂 \x00 ∑", "And God said."]
    out = T.translate(model, tok, texts)
    assert len(out) == len(texts) and out[0] == out[1] == ""
    assert all(isinstance(t, str) for t in out)
    assert T.translate(model, tok, ["", "東京 🙂", "And God said."], beam=2)[0] == ""


def test_compiled_translation_equals_plain(model_dir, bible_pairs):
    """Static cache + compiled step (dynamo-traced, eager backend), a short last batch filled up: the
    same sentences as the growing cache, greedy and beam."""
    from slimformer.data import bible

    model, tok = io.load(model_dir), T.load_tokenizer(model_dir)
    texts = [p.en for p in bible.split_pairs(bible_pairs)["test"][:7]]
    assert T.translate(model, tok, texts, batch=4, compiled="eager") == T.translate(model, tok, texts, batch=4)
    assert T.translate(model, tok, texts, beam=2, batch=4, compiled="eager") == T.translate(model, tok, texts,
                                                                                           beam=2, batch=4)


def test_wrong_model_or_tokenizer_is_a_clear_error(small):
    from slimformer.models import build_builtin

    with pytest.raises(SlimformerError, match="needs a seq2seq model"):
        T.check_tokenizer(build_builtin("vit-tiny"), small)
    with pytest.raises(SlimformerError, match="tokenizer has 600 tokens but the model's vocabulary is 8000"):
        T.check_tokenizer(build_builtin("seq2seq-small"), small)


def test_evaluate_reports_bleu_and_chrf(model_dir):
    model, tok = io.load(model_dir), T.load_tokenizer(model_dir)
    metrics = T.evaluate(model, split="dev", limit=8, tok=tok)
    assert set(metrics) == {"bleu", "chrf"}
    assert 0 <= metrics["bleu"] <= 100


def run_cli(args, capsys):
    from slimformer.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


def test_cli_translate(model_dir, capsys, caplog):
    code, out, err = run_cli(["translate", str(model_dir), ""], capsys)
    assert code == 2 and "nothing to translate" in err and err.count("\n") == 1
    code, out, err = run_cli(["translate", str(model_dir), "Hello ☃", "word " * 40], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    assert "truncated" in err + caplog.text  # a warning (stderr in a shell; captured by pytest here)
    code, out, err = run_cli(["translate", str(ROOT / "no-such-dir"), "Hello"], capsys)
    assert code == 2 and "not found" in err


def test_benchmark_tiny_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_translation", ROOT / "benchmarks" / "translation.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_translation"] = bench
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    report = bench.main(["--tiny", "--sentences", "16", "--out-dir", str(tmp_path)])
    assert (tmp_path / "translation-tiny.json").exists() and (tmp_path / "translation-tiny.md").exists()
    names = {r["name"] for r in report["results"]}
    assert {"slimformer fp32 (KV cache)", "slimformer fp32 (no cache)", "ctranslate2 int8"} <= names
    assert {bench.variant_name(r) for r in bench.RECIPES} <= names  # int8, encoder ToMe, both
    assert set(report["bleu_delta"]) == set(bench.RECIPES)
    assert {r["batch"] for r in report["results"]} == {1, 32}
    # the CTranslate2 conversion computes our function: fp32 outputs agree (allowing rare float ties)
    assert report["quality"]["ctranslate2 fp32"]["identical_to_fp32"] >= 0.9


def test_ctranslate2_conversion_computes_our_function(small, tmp_path):
    """Per-token log-probabilities of CTranslate2 (fp32) equal ours: the Marian route keeps pre-LN,
    final norms, learned positions and the <s> start (tolerance: LayerNorm epsilon 1e-6 vs CT2's)."""
    from slimformer.bench import ct2
    from slimformer.models.seq2seq import Seq2Seq

    model = Seq2Seq(replace(T.MODEL_CONFIG, vocab_size=small.get_vocab_size(), d_model=32, n_enc_layers=2,
                            n_dec_layers=2, d_ff=64, max_len=32)).eval()
    with torch.no_grad():  # non-trivial norms so that a misplaced LayerNorm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    srcs = T.encode_sources(small, ["In the beginning God created the heavens.", "Jesus wept."], 32)
    tgts = [small.encode(" Y dijo Dios: Sea la luz.").ids, small.encode(" Jesús lloró.").ids]
    translator = ct2.translator(ct2.convert(model, small, tmp_path / "ct2", quantization=None), "float32", 1)
    scored = translator.score_batch([[small.id_to_token(i) for i in s] for s in srcs],
                                    [[small.id_to_token(i) for i in t] for t in tgts])
    for s, t, r in zip(srcs, tgts, scored, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([s]), torch.tensor([[1] + t]))[0], -1)
        ours = torch.tensor([float(logp[i, x]) for i, x in enumerate(t + [2])])
        assert torch.allclose(ours, torch.tensor(r.log_probs), atol=1e-3), (ours, r.log_probs)
