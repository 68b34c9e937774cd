"""Model dirs: `model.safetensors` + `slimformer.json`, nothing that can execute code when loaded.

`slimformer.json` holds the architecture and its config, the recipe applied (each step with the
small state it needs to rebuild its structure, e.g. which heads were kept), library versions, the
size, and the SHA-256 of the weights so a truncated or flipped file is caught before it is used.
A dir is written atomically: a crash mid-save leaves the previous dir as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import atomic, guard
from .errors import SlimformerError
from .models import BUILTINS, architecture_of, build_builtin, build_model, config_dict, whisper_ct2
from .models import hf as hf_models

WEIGHTS = "model.safetensors"
META = "slimformer.json"
FORMAT = "slimformer-model/1"
MAX_META_BYTES = 64 << 20  # a real slimformer.json is kilobytes


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("slimformer", "torch", "transformers", "torchao", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def describe(model: nn.Module) -> dict[str, Any]:
    """Architecture name + config dict of a reference or Hugging Face model."""
    if hf_models.is_hf_model(model):
        return {"architecture": "hf", "config": hf_models.hf_config_dict(model)}
    return {"architecture": architecture_of(model), "config": config_dict(model)}


def plain_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to save, with tied (shared-storage) entries stored once and recorded as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        if type(t) not in (torch.Tensor, nn.Parameter):
            raise SlimformerError(f"tensor {name!r} is a {type(t).__name__}; the step that made it must "
                                  "export plain tensors before saving")
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    return tensors, aliases


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recorded_recipe(model: nn.Module, recipe: list[dict] | None) -> list[dict]:
    """The recipe to save: the one given, else the model's own record; refuses a model whose changes
    no record explains."""
    from .compress.steps import detected_steps

    if recipe is None:
        recipe = list(getattr(model, "_slimformer_recipe", None) or [])
    recorded = {e.get("step") for e in recipe if isinstance(e, dict)}
    missing = [name for name in detected_steps(model) if name not in recorded]
    if missing:
        raise SlimformerError(f"model carries step(s) {', '.join(missing)} that its recipe record does not list; "
                              "compress it with slimformer.compress_ / compress (which record the recipe) or "
                              "pass recipe= to save_model")
    return recipe


def save_model(model: nn.Module, out: str | Path, recipe: list[dict] | None = None,
               extra: dict[str, Any] | None = None, files: dict[str, bytes | Path] | None = None) -> Path:
    """Write `model` as a model dir at `out`, atomically.

    recipe: the applied steps (`[{"step", "options", "state"}]`), replayed by `load_model`; by default
    the record the model carries (`compress_` / `compress` put it there). A model that visibly carries a
    step's change (patched forward, swapped modules) but no record is refused: it would load back
    uncompressed, or not at all.
    extra: more JSON metadata (e.g. the task and its preprocessing).
    files: more files to place in the dir (e.g. a tokenizer), as bytes or a path to copy.
    """
    out = Path(out)
    recipe = recorded_recipe(model, recipe)
    if out.exists() and not (out.is_dir() and ((out / META).is_file() or not any(out.iterdir()))):
        raise SlimformerError(f"{out}: exists and is not a slimformer model dir; refusing to replace it "
                              "(saving swaps the whole dir): choose a new path")
    tensors, aliases = plain_state_dict(model)
    with atomic.atomic_dir(out) as staging:
        save_file(tensors, staging / WEIGHTS, metadata={"format": "pt"})
        for name, content in (files or {}).items():
            data = content.read_bytes() if isinstance(content, Path) else content
            (staging / name).write_bytes(data)
        size = (staging / WEIGHTS).stat().st_size
        meta = {
            "format": FORMAT,
            **describe(model),
            "recipe": recipe or [],
            "aliases": aliases,
            "size_mb": round(size / 2**20, 4),
            "n_params": int(sum(t.numel() for t in tensors.values())),
            "sha256": sha256(staging / WEIGHTS),
            "versions": versions(),
            **(extra or {}),
        }
        (staging / META).write_text(json.dumps(meta, indent=2))
    return out


def read_meta(path: str | Path) -> dict[str, Any]:
    """The parsed `slimformer.json` of a model dir, validated enough to be used."""
    path = Path(path)
    meta_path = path / META
    if not path.is_dir():
        raise SlimformerError(f"{path}: no such model dir")
    if path.name.endswith(".partial"):
        raise SlimformerError(f"{path}: staging dir of an unfinished (interrupted) save, never a model; delete it")
    if not meta_path.exists():
        raise SlimformerError(f"{meta_path}: missing; not a slimformer model dir (or an unfinished save)")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise SlimformerError(f"{meta_path}: {meta_path.stat().st_size:,} bytes, more than any real "
                              f"{META} ({MAX_META_BYTES:,}); refusing to parse it")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, RecursionError) as e:  # bad JSON/UTF-8, 5000-digit ints, `[[[[...` bombs
        raise SlimformerError(f"{meta_path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SlimformerError(f"{meta_path}: format is not {FORMAT!r}")
    for key, kind in (("architecture", str), ("config", dict), ("recipe", list), ("aliases", dict)):
        if not isinstance(meta.get(key), kind):
            raise SlimformerError(f"{meta_path}: field {key!r} missing or not a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["aliases"].items()):
        raise SlimformerError(f"{meta_path}: field 'aliases' must map tensor names to tensor names")
    if not isinstance(meta.get("sha256", ""), str):
        raise SlimformerError(f"{meta_path}: field 'sha256' must be a hex string")
    return meta


def verify_checksum(path: Path, expected_sha256: str | None) -> None:
    """The weights file exists and hashes to what `slimformer.json` recorded (warn if it recorded none)."""
    if not path.exists():
        raise SlimformerError(f"{path}: missing")
    if expected_sha256 is None:
        logging.getLogger(__name__).warning("%s: no sha256 in %s, so damage inside tensor data cannot be detected",
                                            path, META)
    elif sha256(path) != expected_sha256:
        raise SlimformerError(f"{path}: checksum does not match {META} (file truncated, corrupted or "
                              "replaced)")


def read_weights(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file, naming the file in every failure (missing, truncated, corrupt)."""
    if not path.exists():
        raise SlimformerError(f"{path}: missing")
    if expected_sha256 is not None:
        verify_checksum(path, expected_sha256)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SlimformerError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from e


def load_state_checked(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `tensors` into `model`, naming the first tensor that is missing, extra or mis-shaped."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing:
        raise SlimformerError(f"{source}: tensor {missing[0]!r} missing ({len(missing)} missing in all)")
    if extra:
        raise SlimformerError(f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")
    for name, want in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(want.shape):
            raise SlimformerError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, the config "
                                  f"expects {tuple(want.shape)}")
        if t.dtype != want.dtype:
            raise SlimformerError(f"{source}: tensor {name!r} has dtype {t.dtype}, expected {want.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SlimformerError(f"{source}: tensor {name!r} holds {bad} NaN/Inf value(s); the weights are corrupt")
    model.load_state_dict(tensors, strict=True)


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """The model skeleton described by `meta`, with every recipe step's structure replayed."""
    from .compress.recipe import restore_recipe

    if meta["architecture"] == "hf":
        model = hf_models.build_hf(meta["config"])
    else:
        model = build_model(meta["architecture"], meta["config"])
    return restore_recipe(model, meta["recipe"])


def load_model_dir(path: str | Path) -> nn.Module:
    """Rebuild a saved model (compressed or not) from its dir, in eval mode, with no pickles."""
    path = Path(path)
    meta = read_meta(path)
    verify_checksum(path / WEIGHTS, meta.get("sha256"))  # damage is named as such before anything parses it
    guard.check_model_config(meta, path / WEIGHTS, str(path / META), build_from_meta)  # before allocating anything
    try:
        model = build_from_meta(meta)
    except SlimformerError:
        raise
    except Exception as e:  # untrusted file: whatever its config/recipe state breaks, name the file
        raise SlimformerError(f"{path / META}: config does not build a model ({type(e).__name__}: {e})") from e
    tensors = read_weights(path / WEIGHTS)  # checksum verified above
    for alias, target in meta["aliases"].items():
        if target not in tensors:
            raise SlimformerError(f"{path / META}: alias {alias!r} points to missing tensor {target!r}")
        tensors[alias] = tensors[target]
    load_state_checked(model, tensors, str(path / WEIGHTS))
    model._slimformer_recipe = meta["recipe"]  # saving it again keeps its record (and its patches)
    return model.eval()


def load(ref: str | Path) -> nn.Module:
    """A model by reference: a built-in name, `minilm`, a slimformer model dir or a Hugging Face dir."""
    ref_str = str(ref)
    if ref_str in BUILTINS:
        return build_builtin(ref_str).eval()
    if ref_str == "minilm":
        return hf_models.load_hf_dir(hf_models.minilm_dir())
    if ref_str == whisper_ct2.BUILTIN:
        return whisper_ct2.load_packaged()
    path = Path(ref)
    if path.is_dir():
        if (path / META).exists():
            return load_model_dir(path)
        if whisper_ct2.is_ct2_dir(path):
            return whisper_ct2.load_dir(path)
        if whisper_ct2.is_hf_whisper_dir(path):
            return whisper_ct2.load_hf_whisper_dir(path)
        if (path / "config.json").exists():
            return hf_models.load_hf_dir(path)
        raise SlimformerError(f"{path}: neither a slimformer model dir ({META}) nor a Hugging Face dir "
                              "(config.json)")
    if path.suffix in hf_models.PICKLE_SUFFIXES:
        raise SlimformerError(f"{path}: pickled weights are refused (unpickling can run arbitrary code); "
                              "convert them to safetensors on a machine you trust")
    raise SlimformerError(f"model {ref_str!r} not found: give a model dir or one of "
                          f"{', '.join([*BUILTINS, 'minilm', whisper_ct2.BUILTIN])}")
