"""The Python API, mirroring the CLI one function per command, with torchao's and transformers' habits:
`compress_` changes the model you pass (in place, named so), `compress` gives back a new one.

    import slimformer
    from slimformer.steps import Int8, Tome
    model = slimformer.load("runs/digits")
    slimformer.compress_(model, [Tome(r=4), Int8()])            # in place; returns the same model
    small = slimformer.compress("runs/digits", "tome:r=4+int8", out="runs/digits-small")  # new model, saved
    print(slimformer.evaluate("runs/digits-small", "digits"))
    vectors = slimformer.embed("minilm", ["A sentence.", "Another one."])

The documented contract (Python API, model dir format, results JSON, CLI) is in docs/.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from . import atomic, io
from .compress.recipe import RecipeStep, apply_recipe, parse_recipe
from .compress.registry import StepContext
from .errors import SlimformerError
from .tasks import get_task

load = io.load
CALIB_TEXT_BATCH = 16   # texts per calibration batch
CALIB_MAX_TOKENS = 128  # calibration rows are cut here: statistics, not answers, so long rows add little


def model_task(ref: str | Path) -> str | None:
    """The task a saved model dir was trained for, if it says."""
    path = Path(str(ref))
    if (path / io.META).exists():
        return io.read_meta(path).get("task")
    return None


def recipe_of(ref: str | Path | nn.Module) -> list[dict]:
    """The recipe already applied to a saved model (empty for fresh or built-in models)."""
    if isinstance(ref, nn.Module):
        return list(getattr(ref, "_slimformer_recipe", []))
    path = Path(str(ref))
    if (path / io.META).exists():
        return io.read_meta(path)["recipe"]
    return []


def step_context(task: str | None, teacher: nn.Module | None = None, calib: Any = None) -> StepContext:
    """What steps may use: calibration batches (the caller's own, else the task's), the task, a teacher.
    `calib`: an iterable of model inputs, each a tuple of positional args or a dict of keyword args."""
    if calib is not None:
        batches = list(calib)
        if not batches:
            raise SlimformerError("calib is empty: give at least one batch of model inputs")
        source = lambda: iter(batches)  # noqa: E731 (a re-iterable view of the caller's batches)
    else:
        source = getattr(get_task(task), "calibration", None) if task is not None else None
    return StepContext(calib=source, task=task, teacher=teacher)


def calibration_inputs(model: nn.Module, calib: Any, source: str | Path | None = None, tokenizer: Any = None
                       ) -> list[tuple | dict] | None:
    """The caller's calibration data as model inputs: batches (dicts of keyword inputs, tuples of
    positional ones) pass as they are, a tensor is one positional input (e.g. images `[B, C, H, W]`), and
    texts are tokenized in batches by `tokenizer`, else the one saved beside the model (`source`, or the
    dir a Hugging Face model was loaded from), else MiniLM's where the model's vocabulary is MiniLM's."""
    if calib is None:
        return None
    if isinstance(calib, (str, Tensor, dict, tuple)):
        raise SlimformerError(f"calib must be a list (or iterable) of batches or texts, got one "
                              f"{type(calib).__name__}; wrap it in a list")
    items = list(calib)
    if not items:
        raise SlimformerError("calib is empty: give at least one batch of model inputs, or texts")
    if all(isinstance(t, str) for t in items):
        return _text_batches(model, items, source, tokenizer)
    bad = [type(t).__name__ for t in items if not isinstance(t, (dict, tuple, Tensor))]
    if bad:
        raise SlimformerError(f"calib items must all be texts, or all model inputs (dict of keyword inputs, tuple "
                              f"of positional ones, or a tensor), got a {bad[0]}")
    return [(t,) if isinstance(t, Tensor) else t for t in items]


def _text_batches(model: nn.Module, texts: list[str], source: str | Path | None, tokenizer: Any) -> list[dict]:
    import inspect

    tok = tokenizer or _tokenizer_for(model, source)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise SlimformerError(f"calib texts: the tokenizer has {len(tok):,} tokens, the model's vocabulary "
                              f"{vocab:,}; pass tokenizer= (the model's own) or tokenized batches")
    accepted = set(inspect.signature(model.forward).parameters)
    limit = min(CALIB_MAX_TOKENS, getattr(getattr(model, "config", None), "max_position_embeddings", None)
                or CALIB_MAX_TOKENS)
    batches = []
    for i in range(0, len(texts), CALIB_TEXT_BATCH):
        enc = tok(texts[i:i + CALIB_TEXT_BATCH], padding=True, truncation=True, max_length=limit,
                  return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in accepted})
    return batches


def _tokenizer_for(model: nn.Module, source: str | Path | None) -> Any:
    """The tokenizer beside the model (its dir, or the dir it was loaded from), else MiniLM's for a model
    whose vocabulary is MiniLM's; refuses rather than guess."""
    from .models.hf import is_hf_model
    from .tasks import embedding

    if not is_hf_model(model):
        raise SlimformerError(f"calib texts: {type(model).__name__} is not a Hugging Face text model; pass "
                              "calibration batches of model inputs instead")
    for ref in (source, getattr(model, "name_or_path", None)):
        if ref and (str(ref) == "minilm" or Path(str(ref)).is_dir()):
            try:
                return embedding.tokenizer_for(ref)
            except SlimformerError:
                continue  # no tokenizer saved there: try the next place
    minilm = embedding.tokenizer()
    if getattr(model.config, "vocab_size", None) == len(minilm):
        return minilm
    raise SlimformerError("calib texts: no tokenizer beside the model (tokenizer.json or vocab.txt); pass "
                          "tokenizer= or tokenized batches")


def _compress(model: nn.Module, steps: list[RecipeStep], task: str | None, applied: list[dict],
              calib: list | None) -> tuple[nn.Module, list[dict]]:
    """Apply parsed steps on top of the `applied` record; the model carries the full record after."""
    teacher = copy.deepcopy(model).eval() if any(s.step.role == "recovery" for s in steps) else None
    model, record = apply_recipe(model, steps, step_context(task, teacher, calib), applied)
    model._slimformer_recipe = record
    return model.eval(), record


def compress_(model: nn.Module, recipe: Any, *, calib: Any = None, task: str | None = None,
              tokenizer: Any = None) -> nn.Module:
    """Compress `model` in place and return it (torchao's `quantize_` convention: the trailing underscore
    says the argument changes). Use the returned model: a step may swap the top module.

    recipe: inline (`"tome:r=8+int8"`), a YAML path, a list of typed configs from `slimformer.steps`
    (`[Tome(r=8), Int8()]`), or a preset. calib: your calibration data, used instead of random inputs or
    the task's: batches of model inputs (dicts / tuples / tensors) or texts (see `calibration_inputs`).
    task: the task whose data steps may use (calibration, distillation). The applied recipe is recorded on
    the model, so `save_model` writes it and `load` rebuilds the same model."""
    if not isinstance(model, nn.Module):
        raise SlimformerError(f"compress_ changes a model in place: give an nn.Module, got {type(model).__name__} "
                              "(for a path use slimformer.compress)")
    steps = parse_recipe(recipe, task)  # validated before anything runs
    return _compress(model, steps, task, recipe_of(model), calibration_inputs(model, calib, tokenizer=tokenizer))[0]


def compress(model: str | Path | nn.Module, recipe: Any, *, out: str | Path | None = None, calib: Any = None,
             task: str | None = None, tokenizer: Any = None) -> nn.Module:
    """A compressed copy of a model (a module is deep-copied first, a path or built-in name loaded), saved
    as a model dir at `out` when given (atomically, with the source's tokenizer files and task). The
    argument is never changed. See `compress_` for recipe, calib and task."""
    source = None if isinstance(model, nn.Module) else model
    task = task or (model_task(source) if source is not None else None)
    steps = parse_recipe(recipe, task)  # validate before loading anything heavy
    base = copy.deepcopy(model) if source is None else io.load(source)
    applied = recipe_of(model)
    small, record = _compress(base, steps, task, applied, calibration_inputs(base, calib, source, tokenizer))
    if out is not None:
        io.save_model(small, out, recipe=record, extra={"task": task} if task else {},
                      files=tokenizer_files(source) if source is not None else {})
    return small


def compress_model(model: nn.Module, recipe: Any, task: str | None = None, applied: list[dict] | None = None,
                   calib: Any = None) -> tuple[nn.Module, list[dict]]:
    """Internal helper (library code and tests): `compress_` on top of an explicit `applied` record (none
    by default), returning `(model, record)`. Changes `model` in place. Prefer `compress_` / `compress`."""
    steps = parse_recipe(recipe, task)  # `fast` resolves by task
    return _compress(model, steps, task, list(applied or []), calibration_inputs(model, calib))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt")


def tokenizer_files(model_ref: str | Path) -> dict[str, Path]:
    """Tokenizer files of the source model, so a compressed text model stays usable on its own."""
    from .models.hf import minilm_dir

    source = minilm_dir() if str(model_ref) == "minilm" else Path(str(model_ref))
    if not source.is_dir():
        return {}
    return {name: source / name for name in TOKENIZER_FILES if (source / name).is_file()}


def evaluate(model_ref: str | Path | nn.Module, task: str, recipe: Any = None, name: str | None = None
             ) -> dict[str, Any]:
    """The task's metric(s) for a model, as a result record: `{"name", "recipe", "metrics"}`. A module
    passed in is never changed: a recipe is applied to a copy, and its train/eval mode is put back."""
    module = get_task(task)
    steps = parse_recipe(recipe)
    if isinstance(model_ref, nn.Module):
        was_training = model_ref.training
        model = compress(model_ref, steps, task=task) if steps else model_ref
        try:
            metrics = module.evaluate(model)
        finally:
            model_ref.train(was_training)
    else:
        model = io.load(model_ref)
        if steps:
            model = _compress(model, steps, task, recipe_of(model_ref), None)[0]
        metrics = module.evaluate(model)
    label = recipe if isinstance(recipe, (str, Path)) or recipe is None else "+".join(str(s) for s in steps)
    return {"name": name or str(label or "baseline"), "recipe": str(label or ""), "task": task,
            "metrics": metrics}


def embed(model_ref: str | Path | nn.Module, texts: list[str], recipe: str | Path | None = None,
          tokenizer: Any = None) -> Any:
    """L2-normalized sentence embeddings `[len(texts), C]` (mean pooling, as sentence-transformers) with
    the model's own tokenizer and full input length: the numbers `slimformer serve` answers on
    `/v1/embeddings`. A module without `tokenizer` is fed MiniLM's."""
    from .tasks import embedding

    if isinstance(texts, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise SlimformerError(f"texts must be a list of strings, got {type(texts).__name__}")
    model = model_ref if isinstance(model_ref, nn.Module) else io.load(model_ref)
    if tokenizer is None:
        tokenizer = embedding.tokenizer() if isinstance(model_ref, nn.Module) else embedding.tokenizer_for(model_ref)
    steps = parse_recipe(recipe)
    if steps:
        model, _ = compress_model(model, steps, model_task(model_ref) if not isinstance(model_ref, nn.Module)
                                  else None, recipe_of(model_ref))
    return embedding.embed(model, texts, max_length=embedding.token_limit(model, tokenizer), tok=tokenizer)


def transcribe(model_ref: str | Path | nn.Module, audio: list[str | Path], recipe: str | Path | None = None
               ) -> list[dict[str, Any]]:
    """Transcribe audio files (wav/flac, any rate, <= 30 s each) with a Whisper model, one at a time:
    `[{"path", "text", "seconds", "audio_seconds"}]`, where `seconds` excludes loading the model and a
    warm-up call on the first second of the first file (one-off kernel setup belongs to loading).
    Every file is read and checked before the model loads, so a bad file fails fast."""
    import time

    from .tasks import speech

    clips = [speech.read_audio(p) for p in audio]
    model = model_ref if isinstance(model_ref, nn.Module) else io.load(model_ref)
    steps = parse_recipe(recipe)
    if steps:
        model, _ = compress_model(model, steps, "speech", recipe_of(model_ref))
    speech.transcribe(model, [clips[0][:speech.SAMPLE_RATE]], batch=1)  # one-off kernel setup, as loading
    out = []
    for path, clip in zip(audio, clips, strict=True):
        start = time.perf_counter()
        (text,) = speech.transcribe(model, [clip], batch=1)
        out.append({"path": str(path), "text": text, "seconds": round(time.perf_counter() - start, 4),
                    "audio_seconds": round(len(clip) / speech.SAMPLE_RATE, 3)})
    return out


def write_results(path: str | Path, results: list[dict[str, Any]]) -> Path:
    """Write `{"env": ..., "results": [...]}` atomically (the contract in docs/contract.md)."""
    from .bench.env import environment

    if not isinstance(results, list):
        raise SlimformerError("results must be a list of result records")
    atomic.write_text(path, json.dumps({"env": environment(), "results": results}, indent=2))
    return Path(path)
