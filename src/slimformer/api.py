"""The Python API, mirroring the CLI one function per command.

    import slimformer
    model = slimformer.load("runs/digits")
    small = slimformer.compress("runs/digits", "tome:r=4+int8", out="runs/digits-small")
    print(slimformer.evaluate("runs/digits-small", "digits"))
    vectors = slimformer.embed("minilm", ["A sentence.", "Another one."])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from . import atomic, io
from .compress.recipe import RecipeStep, apply_recipe, parse_recipe
from .compress.registry import StepContext
from .errors import SlimformerError
from .tasks import get_task

load = io.load


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


def compress_model(model: nn.Module, recipe: str | Path | list[RecipeStep] | None, task: str | None = None,
                   applied: list[dict] | None = None, calib: Any = None) -> tuple[nn.Module, list[dict]]:
    """Apply a recipe in memory. Returns the compressed model and the full recipe record. `calib`: the
    caller's calibration batches (see `step_context`), used instead of the task's."""
    steps = recipe if isinstance(recipe, list) else parse_recipe(recipe, task)  # `fast` resolves by task
    import copy

    teacher = copy.deepcopy(model).eval() if any(s.step.name == "distill" for s in steps) else None
    model, record = apply_recipe(model, steps, step_context(task, teacher, calib), applied)
    model._slimformer_recipe = record
    return model.eval(), record


def compress(model_ref: str | Path, recipe: str | Path, out: str | Path, task: str | None = None) -> Path:
    """Load a model, apply a recipe, save the result as a model dir (atomically, nothing partial)."""
    task = task or model_task(model_ref)
    steps = parse_recipe(recipe, task)  # validate before loading anything heavy
    model = io.load(model_ref)
    model, record = compress_model(model, steps, task, recipe_of(model_ref))
    extra = {"task": task} if task else {}
    return io.save_model(model, out, recipe=record, extra=extra, files=tokenizer_files(model_ref))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt")


def tokenizer_files(model_ref: str | Path) -> dict[str, Path]:
    """Tokenizer files of the source model, so a compressed text model stays usable on its own."""
    from .models.hf import minilm_dir

    source = minilm_dir() if str(model_ref) == "minilm" else Path(str(model_ref))
    if not source.is_dir():
        return {}
    return {name: source / name for name in TOKENIZER_FILES if (source / name).is_file()}


def evaluate(model_ref: str | Path | nn.Module, task: str, recipe: str | Path | None = None,
             name: str | None = None) -> dict[str, Any]:
    """The task's metric(s) for a model, as a result record: `{"name", "recipe", "metrics"}`."""
    module = get_task(task)
    model = model_ref if isinstance(model_ref, nn.Module) else io.load(model_ref)
    steps = parse_recipe(recipe)
    if steps:
        model, _ = compress_model(model, steps, task, recipe_of(model_ref))
    metrics = module.evaluate(model)
    return {"name": name or str(recipe or "baseline"), "recipe": str(recipe or ""), "task": task,
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
    `[{"path", "text", "seconds", "audio_seconds"}]`, where `seconds` excludes loading the model.
    Every file is read and checked before the model loads, so a bad file fails fast."""
    import time

    from .tasks import speech

    clips = [speech.read_audio(p) for p in audio]
    model = model_ref if isinstance(model_ref, nn.Module) else io.load(model_ref)
    steps = parse_recipe(recipe)
    if steps:
        model, _ = compress_model(model, steps, "speech", recipe_of(model_ref))
    out = []
    for path, clip in zip(audio, clips, strict=True):
        start = time.perf_counter()
        (text,) = speech.transcribe(model, [clip], batch=1)
        out.append({"path": str(path), "text": text, "seconds": round(time.perf_counter() - start, 4),
                    "audio_seconds": round(len(clip) / speech.SAMPLE_RATE, 3)})
    return out


def write_results(path: str | Path, results: list[dict[str, Any]]) -> Path:
    """Write `{"env": ..., "results": [...]}` atomically (the contract in DESIGN.md)."""
    from .bench.env import environment

    if not isinstance(results, list):
        raise SlimformerError("results must be a list of result records")
    atomic.write_text(path, json.dumps({"env": environment(), "results": results}, indent=2))
    return Path(path)
