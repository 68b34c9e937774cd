"""External baselines to measure slimformer's own recipes against, in the same run and on the same inputs.

API (used by `benchmarks/compress.py` and `slimformer bench --baselines ort,torchao`):

    from slimformer.bench.baselines import build_baselines
    for b in build_baselines(["ort", "torchao"], model, args, kwargs, workdir, threads=2):
        timing = measure(lambda: b(*args, **kwargs), batch)   # `b` is called like the torch model
        print(b.name, b.dtype, b.size_mb, timing.p50_ms)

`build_baselines(kinds, ...)` returns a list of `Baseline`s; the kinds are:
- "ort": two baselines, `ort-fp32` and `ort-int8`: the fp32 model exported with
  `torch.onnx.export(..., dynamo=True)` (static shapes: those of `args`/`kwargs`), and that ONNX file
  quantized with `onnxruntime.quantization.quantize_dynamic` (int8 weights, per-token-free dynamic
  uint8 activations: ORT's standard CPU recipe). Each runs in an `InferenceSession` with
  `intra_op_num_threads=threads` and all graph optimizations on.
- "torchao": `torchao-int8`: torchao's `quantize_(model, Int8DynamicActivationInt8WeightConfig())`
  used as-is, eager, no slimformer code path involved.

A `Baseline` is called with the torch model's own inputs and returns the model's first output as a
float32 torch tensor (e.g. BERT's last hidden state [batch, seq, d], a ViT's logits [batch, classes]),
so its fidelity can be compared with the torch model's. `size_mb` is the size of its artifact on disk
(the .onnx file, or torchao's state dict saved with torch.save), in MiB.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SlimformerError

log = logging.getLogger(__name__)

KINDS = ("ort", "torchao")


@dataclass
class Baseline:
    name: str        # e.g. "ort-int8"
    dtype: str       # what the weights are stored as, e.g. "int8"
    size_mb: float   # artifact on disk, MiB
    run: Callable[..., Tensor]

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.run(*args, **kwargs)


def first_output(out: Any) -> Tensor:
    """The first tensor of a model output (a tensor, tuple, or Hugging Face ModelOutput)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        return first_output(next(iter(out.values())))
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    raise SlimformerError(f"cannot find a tensor in model output of type {type(out).__name__}")


def _mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


class _FirstOutput(nn.Module):
    """Wraps a model so the exported ONNX graph has exactly one output: the first tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        return first_output(self.model(*args, **kwargs))


def export_onnx(model: nn.Module, args: tuple, kwargs: dict, path: Path) -> Path:
    """Export `model` (fp32, eval) to one self-contained ONNX file with the dynamo exporter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # onnxscript's constant folder warns for every node it leaves to run time (e.g. HF's mask reshapes)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    with torch.no_grad():
        program = torch.onnx.export(_FirstOutput(model).eval(), args, kwargs=kwargs, dynamo=True,
                                    external_data=False, verbose=False)
    program.save(str(path))
    return path


def quantize_onnx(src: Path, dst: Path) -> Path:
    """ORT's dynamic int8 quantization: int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return dst


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_runner(session, args: tuple, kwargs: dict) -> Callable[..., Tensor]:
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(args) + len(kwargs):
        raise SlimformerError(f"ONNX graph takes {len(names)} inputs ({', '.join(names)}), the model was "
                              f"called with {len(args) + len(kwargs)}")

    def run(*a: Tensor, **kw: Tensor) -> Tensor:
        values = [*a, *kw.values()]
        feeds = {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0]).float()
    return run


def ort_baselines(model: nn.Module, args: tuple, kwargs: dict, workdir: Path, threads: int) -> list[Baseline]:
    """`ort-fp32` and `ort-int8` (see the module docstring). Shapes are fixed to those of the inputs."""
    workdir = Path(workdir)
    fp32 = export_onnx(model, args, kwargs, workdir / "model.onnx")
    int8 = quantize_onnx(fp32, workdir / "model.int8.onnx")
    out = []
    for name, dtype, path in (("ort-fp32", "fp32", fp32), ("ort-int8", "int8", int8)):
        out.append(Baseline(name, dtype, _mb(path), _ort_runner(ort_session(path, threads), args, kwargs)))
    return out


def torchao_baseline(model: nn.Module, workdir: Path) -> Baseline:
    """Plain torchao dynamic int8 (`quantize_` with default settings), eager."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    q = copy.deepcopy(model).eval()
    quantize_(q, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    path = Path(workdir) / "torchao-int8.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(q.state_dict(), path)

    def run(*a: Tensor, **kw: Tensor) -> Tensor:
        with torch.no_grad():
            return first_output(q(*a, **kw)).float()
    return Baseline("torchao-int8", "int8", _mb(path), run)


def build_baselines(kinds: list[str], model: nn.Module, args: tuple, kwargs: dict, workdir: str | Path,
                    threads: int | None = None) -> list[Baseline]:
    """The baselines named in `kinds` (each of "ort", "torchao"), built for these inputs' shapes."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SlimformerError(f"unknown baseline {unknown[0]!r}; valid baselines: {', '.join(KINDS)}")
    threads = threads or torch.get_num_threads() or os.cpu_count() or 1
    model = model.eval()
    out: list[Baseline] = []
    for kind in kinds:
        if kind == "ort":
            out += ort_baselines(model, args, kwargs, Path(workdir) / "ort", threads)
        else:
            out.append(torchao_baseline(model, Path(workdir) / "torchao"))
    return out
