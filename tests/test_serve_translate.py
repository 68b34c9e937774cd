"""`slimformer serve` of a translation model over real HTTP on 127.0.0.1: `/v1/translate` answers what
`tasks.translation.translate` (the `slimformer translate` path) gives for the same texts, honours
`max_new_tokens`, and refuses bad input with a JSON error naming the field. One server subprocess (a
tiny random Seq2Seq with a small byte-level BPE tokenizer, 2 workers) serves the module."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest
import torch
from test_serve_http import assert_error, free_port, post, wait_healthy

from slimformer import io
from slimformer.generate import greedy, pad_batch
from slimformer.tasks import translation as T

MAX_INPUTS, POSITIONS = 4, 48
TEXTS = ["In the beginning God created the heavens and the earth.", "Jesus wept.",
         "The Lord is my shepherd; I shall not want.", "Love is patient and is kind."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random Seq2Seq (std 0.15, so a wrong mask or position shows) and a tokenizer of a few hundred tokens."""
    from slimformer.models import build_model

    tok = T.train_tokenizer([*TEXTS, "En el principio creó Dios los cielos y la tierra.", "Jesús lloró."],
                            vocab_size=300)
    config = replace(T.MODEL_CONFIG, vocab_size=tok.get_vocab_size(), d_model=32, n_enc_layers=1, n_dec_layers=1,
                     d_ff=64, max_len=POSITIONS)
    torch.manual_seed(0)
    model = build_model("seq2seq", config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:  # norms keep their ones: the signal must reach the output
                p.normal_(0, 0.15)
    out = tmp_path_factory.mktemp("translate") / "tiny-s2s"
    return io.save_model(model, out, extra={"task": "translation"}, files={T.TOKENIZER_FILE: tok.to_str().encode()})


@pytest.fixture(scope="module")
def base(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", "serve", str(model_dir), "--port", str(port),
                             "--workers", "2", "--threads", "1", "--max-inputs", str(MAX_INPUTS),
                             "--max-batch-tokens", "256"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 120)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_translations_equal_the_python_decode_path(base, model_dir):
    model, tok = io.load(model_dir), T.load_tokenizer(model_dir)
    expected = T.translate(model, tok, TEXTS)
    assert len(set(expected)) == len(TEXTS), expected  # distinct sources, distinct outputs
    r = post(base, "/v1/translate", {"input": TEXTS, "model": "tiny-s2s"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-s2s"
    assert body["data"] == [{"index": i, "translation": t} for i, t in enumerate(expected)]
    one = post(base, "/v1/translate", {"input": TEXTS[1]}).json()["data"]
    assert one == [{"index": 0, "translation": expected[1]}]

    src = pad_batch(T.encode_sources(tok, TEXTS[:2], POSITIONS), 0)
    short = [tok.decode(ids, skip_special_tokens=True).strip() for ids in greedy(model, src, max_new_tokens=3)]
    r = post(base, "/v1/translate", {"input": TEXTS[:2], "max_new_tokens": 3})
    assert [d["translation"] for d in r.json()["data"]] == short
    info = httpx.get(f"{base}/info", timeout=10).json()
    assert info["kind"] == "translator" and info["max_input_tokens"] == POSITIONS


BAD = [  # (body, status, param, part of the message)
    (b"{not json", 422, "body", "not valid JSON"),
    ({"model": "x"}, 422, "input", "'input' is required"),
    ({"input": 3}, 422, "input", "must be a string or a list of strings"),
    ({"input": []}, 422, "input", "is empty"),
    ({"input": ["ok", "  "]}, 422, "input", "input[1] is empty"),
    ({"input": ["ok", 5]}, 422, "input", "input[1] must be a string"),
    ({"input": "ok", "max_new_tokens": 0}, 422, "max_new_tokens", f"[1, {POSITIONS - 1}]"),
    ({"input": "ok", "max_new_tokens": POSITIONS}, 422, "max_new_tokens", f"[1, {POSITIONS - 1}]"),
    ({"input": "ok", "max_new_tokens": "3"}, 422, "max_new_tokens", "must be int"),
    ({"input": "ok", "model": 1}, 422, "model", "must be str"),
    ({"input": ["ok"] * (MAX_INPUTS + 1)}, 413, "input", f"at most {MAX_INPUTS} per request"),
    ({"input": ["ok", "word " * 40]}, 413, "input", f"input[1] is longer than the model's {POSITIONS} tokens"),
]


@pytest.mark.parametrize("body, status, param, text", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_json_error_naming_the_field(base, body, status, param, text):
    if isinstance(body, bytes):
        r = httpx.post(f"{base}/v1/translate", content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = post(base, "/v1/translate", body)
    assert_error(r, status, param, text)


def test_the_longest_source_that_fits_is_translated_and_one_token_more_is_413(base, model_dir):
    tok = T.load_tokenizer(model_dir)
    text = "and God saw the light that it was good " * 12
    fits = next(text[:n] for n in range(len(text), 0, -1)
                if len(tok.encode(text[:n], add_special_tokens=False).ids) == POSITIONS - 1)
    assert post(base, "/v1/translate", {"input": fits}).status_code == 200  # + EOS = all positions
    assert_error(post(base, "/v1/translate", {"input": fits + " good"}), 413, "input", "longer than")
