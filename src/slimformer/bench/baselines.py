"""External baselines to measure slimformer's own recipes against, in the same run and on the same inputs.

API (used by `slimformer bench --baselines ort,openvino,torchao`, the demo and `benchmarks/`):

    from slimformer.bench.baselines import build_baselines
    for b in build_baselines(["ort", "openvino"], model, args, kwargs, workdir, threads=2, calib=task.calibration):
        timing = measure(lambda: b(*args, **kwargs), batch)   # `b` is called like the torch model
        metrics = task.evaluate(b.module())                   # the task metric, computed as for ours
        print(b.name, b.dtype, b.size_mb, timing.p50_ms, metrics)

`build_baselines(kinds, ...)` returns a list of `Baseline`s; the kinds are:
- "ort": `ort-fp32`, `ort-int8` and `ort-int8-static`: the fp32 model exported with
  `torch.onnx.export(..., dynamo=True)` (batch and sequence length dynamic, so the task metric runs on
  the task's own batches), that ONNX file quantized with `onnxruntime.quantization.quantize_dynamic`
  (int8 weights, activations quantized at run time: ORT's standard recipe for Transformers) and with
  `quantize_static` (QDQ, per-channel int8 weights, uint8 activations with MinMax ranges from `calib`,
  GEMM inputs only).
  Each runs in an `InferenceSession` with `intra_op_num_threads=threads`, all graph optimizations on.
- "openvino": `ov-fp32`, `ov-bf16` (only where OpenVINO reports BF16 support) and `ov-int8`: the same
  ONNX file read by OpenVINO, compiled for the CPU with `INFERENCE_NUM_THREADS=threads` and the latency
  hint; `ov-fp32` pins `INFERENCE_PRECISION_HINT=f32` (OpenVINO silently runs bf16 by default where the
  CPU has it, hence the separate `ov-bf16` row, OpenVINO's default); `ov-int8` is NNCF's static
  post-training quantization (`nncf.quantize`, `ModelType.TRANSFORMER`) calibrated on `calib`, run
  with OpenVINO's default precision for what stays in float.
- "torchao": `torchao-int8`: torchao's `quantize_(model, Int8DynamicActivationInt8WeightConfig())`
  used as-is, eager, no slimformer code path involved.

`calib` is the same calibration data our static int8 uses (the task's `calibration()`: batches of
model inputs). Without it the statically quantized baselines are left out (with a log line), as our
own static int8 refuses to calibrate on random inputs.

A `Baseline` is called with the torch model's own inputs and returns the model's first output as a
float32 torch tensor (e.g. BERT's last hidden state [batch, seq, d], a ViT's logits [batch, classes]).
`module()` wraps it as an `nn.Module` returning what the torch model returns (that tensor, or a
one-tuple where the model returns a ModelOutput), so the task's `evaluate` runs on it unchanged.
`size_mb` is the size of its artifact on disk, in MiB; `memory` the spec that
`bench.memory.peak_memory` runs it with in a fresh process (the inputs file is added by the caller).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SlimformerError

log = logging.getLogger(__name__)

KINDS = ("ort", "openvino", "torchao")
Calib = Callable[[], Iterator[tuple]]


@dataclass
class Baseline:
    name: str        # e.g. "ort-int8"
    dtype: str       # what the weights are stored as, e.g. "int8"
    size_mb: float   # artifact on disk, MiB
    run: Callable[..., Tensor]
    dynamic: bool = True           # accepts any batch and sequence length (else only the export's shapes)
    tensor_output: bool = True     # the torch model returns a plain tensor (else a ModelOutput)
    memory: tuple[str, dict[str, Any]] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.run(*args, **kwargs)

    def module(self) -> nn.Module:
        """This baseline as a model the task's `evaluate` can call like the torch one."""
        return _BaselineModule(self)


class _BaselineModule(nn.Module):
    def __init__(self, baseline: Baseline) -> None:
        super().__init__()
        self.baseline = baseline

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor | tuple[Tensor]:
        out = self.baseline(*args, **kwargs)
        return out if self.baseline.tensor_output else (out,)


def first_output(out: Any) -> Tensor:
    """The first tensor of a model output (a tensor, tuple, or Hugging Face ModelOutput)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        return first_output(next(iter(out.values())))
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    raise SlimformerError(f"cannot find a tensor in model output of type {type(out).__name__}")


def _mb(*paths: Path) -> float:
    files = [f for p in paths for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()])]
    return sum(p.stat().st_size for p in files) / 2**20


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence what exporters and quantizers log or warn while they work (progress, deprecations, and
    ORT's "consider pre-processing" on the root logger): none of it concerns the reader of a table."""
    names = ("", "torch.onnx", "onnxscript", "nncf", "openvino", "torch._dynamo", "torch.export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def input_names(model: nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """The forward parameter name of every input, in call order (what the exported graph calls them)."""
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    return list(bound.arguments)


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, dict[int, Any]]:
    """Batch dynamic on every input, sequence length too on 2-D ones (token ids, masks)."""
    auto = torch.export.Dim.DYNAMIC
    values = [*args, *kwargs.values()]
    return {name: ({0: auto, 1: auto} if v.dim() == 2 else {0: auto})
            for name, v in zip(input_names(model, args, kwargs), values, strict=True)}


def export_onnx(model: nn.Module, args: tuple, kwargs: dict, path: Path) -> tuple[Path, bool]:
    """Export `model` (fp32, eval) to one self-contained ONNX file with the dynamo exporter, batch and
    sequence length dynamic where the model allows it (else at these inputs' shapes). (path, dynamic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with quiet_libraries(), torch.no_grad():
        try:
            program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, external_data=False,
                                        verbose=False, dynamic_shapes=_dynamic_shapes(model, args, kwargs))
            dynamic = True
        except Exception as e:  # noqa: BLE001 - some graphs only export at fixed shapes
            log.info("dynamic-shape ONNX export failed (%s); exporting at fixed shapes", str(e).splitlines()[0])
            program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, external_data=False,
                                        verbose=False)
            dynamic = False
    program.save(str(path))
    return path, dynamic


def calibration_feeds(model: nn.Module, calib: Calib, names: list[str]) -> list[dict[str, Any]]:
    """The task's calibration batches as ONNX feeds `{input name: numpy array}` (the graph's inputs)."""
    feeds = []
    for item in calib():
        args, kwargs = (item, {}) if isinstance(item, tuple) else ((), dict(item))
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
        missing = [n for n in names if n not in bound]
        if missing:
            raise SlimformerError(f"calibration data lacks the graph input {missing[0]!r}")
        feeds.append({n: bound[n].detach().cpu().numpy() for n in names})
    if not feeds:
        raise SlimformerError("calibration data is empty")
    return feeds


def quantize_onnx(src: Path, dst: Path) -> Path:
    """ORT's dynamic int8 quantization: int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_libraries():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def quantize_onnx_static(src: Path, dst: Path, feeds: list[dict[str, Any]]) -> Path:
    """ORT's static int8: QDQ, per-channel int8 weights, uint8 activation ranges (MinMax) from `feeds`,
    on the MatMul / Gemm inputs only. ORT's default also quantizes every Add, Mul, Softmax, Gather...
    it supports, which on MiniLM drops the embedding cosine to 0.33-0.36 (mask and residual additions
    do not survive 8 bits); restricted to the GEMMs, as ORT's Transformer examples do, it keeps 0.94."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    with quiet_libraries():
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"])
    return dst


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeder(names: list[str]) -> Callable[..., dict[str, Any]]:
    """Turns a torch-style call (positional inputs, then keyword ones) into `{graph input: numpy}`."""
    def feeds(*a: Tensor, **kw: Tensor) -> dict[str, Any]:
        rest = names[len(a):]
        if set(kw) != set(rest):
            raise SlimformerError(f"graph takes inputs {', '.join(names)}; called with {len(a)} positional and "
                                  f"{', '.join(kw) or 'no'} keyword inputs")
        values = [*a, *(kw[n] for n in rest)]
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}
    return feeds


def _ort_runner(session) -> Callable[..., Tensor]:
    feeds = _feeder([i.name for i in session.get_inputs()])

    def run(*a: Tensor, **kw: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, feeds(*a, **kw))[0]).float()
    return run


@dataclass
class _Export:
    """The one ONNX export every ONNX-based baseline starts from, with what it needs to know about it."""

    path: Path
    dynamic: bool
    names: list[str]
    tensor_output: bool
    feeds: list[dict[str, Any]] | None  # calibration feeds, None without calibration data


def _export(model: nn.Module, args: tuple, kwargs: dict, workdir: Path, calib: Calib | None) -> _Export:
    path, dynamic = export_onnx(model, args, kwargs, workdir / "model.onnx")
    with torch.no_grad():
        tensor_output = isinstance(model(*args, **kwargs), Tensor)
    names = input_names(model, args, kwargs)
    feeds = None
    if calib is not None and dynamic:
        feeds = calibration_feeds(model, calib, names)
    elif calib is not None:
        log.warning("static int8 baselines left out: the graph only exported at fixed shapes, the calibration "
                    "data has others")
    return _Export(path, dynamic, names, tensor_output, feeds)


def ort_baselines(ex: _Export, workdir: Path, threads: int) -> list[Baseline]:
    """`ort-fp32`, `ort-int8` and (with calibration data) `ort-int8-static`; see the module docstring."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = [("ort-fp32", "fp32", ex.path), ("ort-int8", "int8", quantize_onnx(ex.path, workdir / "model.int8.onnx"))]
    if ex.feeds is not None:
        files.append(("ort-int8-static", "int8",
                      quantize_onnx_static(ex.path, workdir / "model.int8-static.onnx", ex.feeds)))
    else:
        log.warning("ort-int8-static left out: static activation ranges need the task's calibration data")
    return [Baseline(name, dtype, _mb(path), _ort_runner(ort_session(path, threads)), ex.dynamic, ex.tensor_output,
                     ("slimformer.bench.memory:onnx_runner", {"path": str(path), "threads": threads}))
            for name, dtype, path in files]


def ov_compile(model: Any, threads: int, precision: str | None):
    """An OpenVINO CPU model with our thread count and the latency hint; precision None: OpenVINO's own."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    core = ov.Core()
    if isinstance(model, (str, Path)):
        model = core.read_model(str(model))
    return core.compile_model(model, "CPU", config)


def _ov_runner(compiled, names: list[str]) -> Callable[..., Tensor]:
    feeds = _feeder(names)

    def run(*a: Tensor, **kw: Tensor) -> Tensor:
        return torch.from_numpy(compiled(feeds(*a, **kw))[0].copy()).float()
    return run


def ov_bf16_supported() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def nncf_quantize(model: Any, feeds: list[dict[str, Any]]):
    """NNCF's static post-training quantization of an OpenVINO model, the Transformer preset."""
    import nncf

    # NNCF draws rich progress bars on stdout with no switch to turn them off: send them nowhere
    with quiet_libraries(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(feeds))


def openvino_baselines(ex: _Export, workdir: Path, threads: int) -> list[Baseline]:
    """`ov-fp32`, `ov-bf16` (where supported) and (with calibration data) `ov-int8`; see the module docstring."""
    import openvino as ov

    workdir.mkdir(parents=True, exist_ok=True)
    model = ov.Core().read_model(str(ex.path))
    ir = workdir / "model.xml"
    ov.save_model(model, str(ir), compress_to_fp16=False)
    rows = [("ov-fp32", "fp32", ir, "f32")]
    if ov_bf16_supported():
        rows.append(("ov-bf16", "bf16", ir, "bf16"))
    if ex.feeds is not None:
        q = workdir / "model.int8.xml"
        ov.save_model(nncf_quantize(model, ex.feeds), str(q), compress_to_fp16=False)
        rows.append(("ov-int8", "int8", q, None))
    else:
        log.warning("ov-int8 left out: NNCF's static quantization needs the task's calibration data")
    out = []
    for name, dtype, path, precision in rows:
        compiled = ov_compile(path, threads, precision)
        spec = {"path": str(path), "threads": threads, "precision": precision}
        out.append(Baseline(name, dtype, _mb(path, path.with_suffix(".bin")), _ov_runner(compiled, ex.names),
                            ex.dynamic, ex.tensor_output, ("slimformer.bench.memory:openvino_runner", spec)))
    return out


def torchao_baseline(model: nn.Module, args: tuple, kwargs: dict, workdir: Path) -> Baseline:
    """Plain torchao dynamic int8 (`quantize_` with default settings), eager."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    q = copy.deepcopy(model).eval()
    quantize_(q, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    path = Path(workdir) / "torchao-int8.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(q.state_dict(), path)
    with torch.no_grad():
        tensor_output = isinstance(q(*args, **kwargs), Tensor)

    def run(*a: Tensor, **kw: Tensor) -> Tensor:
        with torch.no_grad():
            return first_output(q(*a, **kw)).float()
    return Baseline("torchao-int8", "int8", _mb(path), run, tensor_output=tensor_output)


def build_baselines(kinds: list[str], model: nn.Module, args: tuple, kwargs: dict, workdir: str | Path,
                    threads: int | None = None, calib: Calib | None = None) -> list[Baseline]:
    """The baselines named in `kinds` (each of "ort", "openvino", "torchao"), built for these inputs.

    calib: the task's calibration batches, for ORT static int8 and NNCF (left out without it)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SlimformerError(f"unknown baseline {unknown[0]!r}; valid baselines: {', '.join(KINDS)}")
    threads = threads or torch.get_num_threads() or os.cpu_count() or 1
    model = model.eval()
    workdir = Path(workdir)
    ex = _export(model, args, kwargs, workdir / "onnx", calib) if {"ort", "openvino"} & set(kinds) else None
    out: list[Baseline] = []
    for kind in kinds:
        if kind == "ort":
            out += ort_baselines(ex, workdir / "ort", threads)
        elif kind == "openvino":
            out += openvino_baselines(ex, workdir / "openvino", threads)
        else:
            out.append(torchao_baseline(model, args, kwargs, workdir / "torchao"))
    return out
