"""`slimformer bench`: every variant of one model measured in one run, as contract result records.

A variant is anything with one forward call on the shared inputs: the fp32 model, the model after a
recipe, or an external baseline (ONNX Runtime, torchao). All are timed interleaved in the same
process on the same inputs (ratios are what a reader compares), then each one's peak memory is
measured alone in a fresh subprocess, and its size on disk read from the file it was saved to.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io
from ..errors import SlimformerError
from ..families import family_of
from ..models.hf import is_hf_model
from .inputs import example_inputs
from .memory import peak_memory
from .timing import Timing, interleaved

log = logging.getLogger(__name__)

PRELOAD = ["slimformer.io", "slimformer.compress.steps", "slimformer.bench.inputs"]


@dataclass
class Variant:
    """One thing to measure. `fn` runs one batch; `memory` is (factory, kwargs) for `peak_memory`."""

    name: str
    recipe: str
    fn: Callable[[], object]
    dtype: str = "fp32"
    kind: str = "slimformer"  # "slimformer" (fp32 or a recipe) or "baseline" (external runtime)
    memory: tuple[str, dict[str, Any]] | None = None
    preload: list[str] = field(default_factory=lambda: list(PRELOAD))
    size_mb: float | None = None
    n_params: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "fp32"


def recipe_dtype(record: list[dict]) -> str:
    """The precision a recipe leaves the weights in: the name of its low-precision step, else fp32."""
    from ..compress.steps import get_step

    for entry in record:
        if get_step(entry["step"]).makes_low_precision:
            return entry["step"]
    return "fp32"


def tokens_of(model: nn.Module, seq_len: int) -> int:
    """Sequence length the model really sees (patches + class token for an image model, else `seq_len`)."""
    return family_of(model).token_count(model, seq_len)


def torch_variant(name: str, model: nn.Module, recipe: str, record: list[dict], inputs: tuple[tuple, dict],
                  workdir: Path, batch: int, seq_len: int, metrics: dict[str, float] | None = None) -> Variant:
    """A PyTorch variant, saved as a model dir so its size is measured on disk and its memory in a
    fresh process that loads exactly what a user would ship."""
    args, kwargs = inputs

    def fn() -> object:
        return model(*args, **kwargs)

    variant = Variant(name=name, recipe=recipe, fn=fn, dtype=recipe_dtype(record), metrics=dict(metrics or {}))
    if is_hf_model(model):
        variant.preload = [*PRELOAD, "transformers"]
    path = workdir / slug(name)
    try:
        io.save_model(model, path, recipe=record)
    except SlimformerError as e:
        log.warning("%s: cannot save (%s); size from memory, no peak-memory measurement", name, e)
        tensors = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        variant.size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
        variant.n_params = int(sum(p.numel() for p in model.parameters()))
        return variant
    meta = io.read_meta(path)
    variant.size_mb = (path / io.WEIGHTS).stat().st_size / 2**20
    variant.n_params = int(meta["n_params"])
    variant.memory = ("slimformer.bench.memory:model_dir_runner",
                      {"path": str(path), "batch": batch, "seq_len": seq_len})
    return variant


def result_record(v: Variant, timing: Timing, mem: float | None, batch: int, seq_len: int, threads: int,
                  task: str | None) -> dict[str, Any]:
    """One result in the results-JSON contract of docs/contract.md (plus `kind`, `n_params`, `task`, p50 spread)."""
    return {
        "name": v.name,
        "recipe": v.recipe,
        "kind": v.kind,
        "task": task,
        "metrics": v.metrics,
        "latency_ms": {"p50": round(timing.p50_ms, 4), "p99": round(timing.p99_ms, 4),
                       "mean": round(timing.mean_ms, 4)},
        "throughput": round(timing.throughput, 3),
        "repeats": timing.repeats,
        "peak_mem_mb": None if mem is None else round(mem, 2),
        "size_mb": None if v.size_mb is None else round(v.size_mb, 4),
        "n_params": v.n_params,
        "batch": batch,
        "seq_len": seq_len,
        "threads": threads,
        "dtype": v.dtype,
    }


def measure_variants(variants: list[Variant], batch: int, seq_len: int, threads: int, task: str | None = None,
                     rounds: int = 10, calls_per_round: int = 2, max_seconds: float | None = None,
                     memory: bool = True, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time all variants interleaved, then measure each one's peak memory alone; contract records."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SlimformerError(f"variant names must be unique, got {names}")
    torch.set_num_threads(threads)
    say = progress or (lambda _msg: None)
    timings = interleaved({v.name: v.fn for v in variants}, batch, rounds=rounds, calls_per_round=calls_per_round,
                          max_seconds=max_seconds, on_round=lambda r, n: say(f"timing round {r}/{n}"))
    results = []
    for v in variants:
        mem = None
        if memory and v.memory is not None:
            say(f"peak memory: {v.name}")
            factory, kwargs = v.memory
            try:
                mem = peak_memory(factory, kwargs, threads=threads, preload=v.preload)["peak_mem_mb"]
            except SlimformerError as e:
                log.warning("%s: %s", v.name, e)
        results.append(result_record(v, timings[v.name], mem, batch, seq_len, threads, task))
    return results


def baseline_variants(model: nn.Module, which: list[str], inputs: tuple[tuple, dict], workdir: Path,
                      threads: int, task: str | None,
                      evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                      calib: Callable[[], Any] | None = None) -> list[Variant]:
    """External baselines (ONNX Runtime fp32 / dynamic / static int8, OpenVINO fp32 / bf16 / NNCF int8,
    torchao int8) built by `bench.baselines`, static ones calibrated on the task's calibration data.

    They are timed on the same inputs as our variants, and their task metric is computed as ours is
    (`evaluate`, default the task's own, run on the baseline wrapped as a model); `calib` (default the
    task's calibration data) is what static int8 baselines calibrate on. Their peak memory is
    measured like ours: a fresh process loads the artifact (.onnx file, OpenVINO IR) and runs it.
    """
    if not which:
        return []
    try:
        from .baselines import build_baselines
    except ImportError as e:
        log.warning("baselines %s skipped: %s", ",".join(which), e)
        return []
    from ..tasks import get_task

    module = get_task(task) if task else None
    evaluate = evaluate or (module.evaluate if module else None)
    calib = calib or getattr(module, "calibration", None)
    args, kwargs = inputs
    workdir = Path(workdir)
    save_inputs(inputs, workdir / "inputs.safetensors")
    out = []
    for b in build_baselines(which, model, args, kwargs, workdir / "baselines", threads=threads, calib=calib):
        def fn(b=b) -> object:
            return b(*args, **kwargs)

        metrics = evaluate(b.module()) if evaluate and b.dynamic else {}
        v = Variant(name=b.name, recipe="", fn=fn, dtype=b.dtype, kind="baseline", size_mb=b.size_mb,
                    preload=["onnxruntime", "openvino", "slimformer.bench.baselines"], metrics=metrics)
        if b.memory is not None:
            factory, spec = b.memory
            v.memory = (factory, {**spec, "inputs": str(workdir / "inputs.safetensors")})
        out.append(v)
    return out


def save_inputs(inputs: tuple[tuple, dict], path: Path) -> None:
    """The benchmark inputs as safetensors (`arg0`, ..., `kw:<name>`), for a fresh measuring process."""
    from safetensors.torch import save_file

    args, kwargs = inputs
    tensors = {f"arg{i}": a.contiguous() for i, a in enumerate(args)}
    tensors.update({f"kw:{k}": v.contiguous() for k, v in kwargs.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"order": json.dumps(list(tensors))})  # call order, kept exactly


def bench(model_ref: str | Path, recipes: list[str] | None = None, batch: int = 8, seq_len: int = 128,
          threads: int = 2, baselines: list[str] | None = None, task: str | None = None, rounds: int = 10,
          memory: bool = True, progress: Callable[[str], None] | None = None,
          workdir: Path | None = None) -> list[dict[str, Any]]:
    """Measure the fp32 model, each recipe and each baseline in one run. Returns contract records.

    task: when given, every variant's task metric is computed too (on the task's real data).
    """
    from ..api import compress_model, recipe_of
    from ..compress.presets import expand  # a preset's row shows the concrete recipe it resolved to
    from ..compress.recipe import parse_recipe
    from ..tasks import get_task

    for r in recipes or []:
        parse_recipe(r, task)  # every recipe validated before anything heavy runs
    if batch < 1 or seq_len < 1 or threads < 1:
        raise SlimformerError(f"--batch, --seq and --threads must be >= 1, got {batch}, {seq_len}, {threads}")
    torch.set_num_threads(threads)
    say = progress or (lambda _msg: None)
    evaluate = get_task(task).evaluate if task else None
    with tempfile.TemporaryDirectory(prefix="slimformer-bench-", dir=workdir) as tmp:
        tmp_path = Path(tmp)
        base = io.load(model_ref)
        inputs = example_inputs(base, batch=batch, seq_len=seq_len)
        seq = tokens_of(base, seq_len)
        applied = recipe_of(model_ref)
        say("fp32")
        variants = [torch_variant("fp32", base, "", applied, inputs, tmp_path, batch, seq_len,
                                  evaluate(base) if evaluate else None)]
        for r in recipes or []:
            say(f"compress: {r}")
            model, record = compress_model(io.load(model_ref), r, task, applied)
            variants.append(torch_variant(r, model, str(expand(r, task)), record, inputs, tmp_path, batch, seq_len,
                                          evaluate(model) if evaluate else None))
        variants += baseline_variants(base, baselines or [], inputs, tmp_path, threads, task)
        return measure_variants(variants, batch, seq, threads, task, rounds=rounds, memory=memory, progress=say)
