"""Reference models: KV-cache decoding equals full decoding; padding never changes real tokens."""

import torch

from slimformer.models import (
    BUILTINS,
    Encoder,
    EncoderConfig,
    Seq2Seq,
    Seq2SeqConfig,
    ViT,
    ViTConfig,
    build_builtin,
)
from slimformer.models.decoder import Decoder, DecoderConfig

SMALL_S2S = Seq2SeqConfig(vocab_size=50, max_len=32, d_model=32, n_enc_layers=2, n_dec_layers=2, n_heads=4,
                          d_ff=64)


def test_seq2seq_incremental_decoding_matches_full():
    model = Seq2Seq(SMALL_S2S).eval()
    src = torch.randint(3, 50, (2, 9))
    src[0, 6:] = 0  # padding in the source
    tgt = torch.randint(3, 50, (2, 7))
    memory, bias = model.encode(src)
    full, _ = model.decode(tgt, memory, bias)
    cache, steps = None, []
    for t in range(tgt.shape[1]):
        logits, cache = model.decode(tgt[:, t:t + 1], memory, bias, cache)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_decoder_chunked_cache_matches_full():
    model = Decoder(DecoderConfig(vocab_size=40, max_len=32, d_model=32, n_layers=2, n_heads=2, d_ff=64)).eval()
    tokens = torch.randint(3, 40, (3, 10))
    full, _ = model(tokens)
    first, cache = model(tokens[:, :4])
    second, _ = model(tokens[:, 4:], cache=cache)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=1e-5)


def test_encoder_padding_does_not_change_real_tokens():
    model = Encoder(EncoderConfig(vocab_size=60, max_len=20, d_model=32, n_layers=2, n_heads=4, d_ff=64)).eval()
    tokens = torch.randint(3, 60, (1, 7))
    alone = model(tokens)
    padded = torch.cat([tokens, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = padded != 0
    batched = model(padded, mask)
    torch.testing.assert_close(batched[:, :7], alone, atol=1e-5, rtol=1e-5)


def test_seq2seq_source_padding_does_not_change_logits():
    model = Seq2Seq(SMALL_S2S).eval()
    src = torch.randint(3, 50, (1, 6))
    tgt = torch.randint(3, 50, (1, 5))
    alone = model(src, tgt)
    padded = model(torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1), tgt)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_tied_embeddings():
    model = Seq2Seq(SMALL_S2S)
    assert model.decoder.lm_head.weight is model.encoder.tok_emb.weight
    assert model.decoder.tok_emb is model.encoder.tok_emb


def test_vit_shapes():
    model = ViT(ViTConfig(image_size=16, patch_size=4, in_channels=1, n_classes=7, d_model=32, n_layers=1,
                          n_heads=2, d_ff=64)).eval()
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    assert model.embed(torch.randn(2, 1, 16, 16)).shape == (2, 17, 32)


def test_vit_b16_has_197_tokens():
    assert BUILTINS["vit-b16"][1].n_patches + 1 == 197


def test_every_builtin_builds_every_layer_and_runs():
    """Each built-in holds at least its token table and its blocks' attention (4 d^2) and MLP (2 d d_ff)
    weights for every layer its config names (one layer missing falls below), and its forward gives
    finite outputs on valid inputs."""
    from slimformer.bench.inputs import example_inputs

    for name in BUILTINS:
        if name == "vit-b16":
            continue
        model, cfg = build_builtin(name), BUILTINS[name][1]
        layers = getattr(cfg, "n_layers", 0) or cfg.n_enc_layers + cfg.n_dec_layers
        d = cfg.d_model
        floor = layers * (4 * d * d + 2 * d * cfg.d_ff) + getattr(cfg, "vocab_size", 0) * d
        assert sum(p.numel() for p in model.parameters()) >= floor, name
        args, kwargs = example_inputs(model, batch=2, seq_len=8)
        with torch.no_grad():
            out = model(*args, **kwargs)
        out = out if isinstance(out, torch.Tensor) else out[0]
        assert out.shape[0] == 2 and bool(torch.isfinite(out).all()), name
