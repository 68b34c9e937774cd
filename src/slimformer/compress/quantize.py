"""Quantization steps on torchao: `int8` (dynamic int8 activations x int8 weights), `int8-weight`
(int8 weights, float activations) and `bf16`, each with an optional `compile` (torch.compile, inductor).

gpt-fast style, two verbs. `apply` quantizes every chosen `nn.Linear` with torchao's `quantize_`
(`Int8DynamicActivationInt8WeightConfig` / `Int8WeightOnlyConfig`: symmetric, per output channel for
weights, per token for activations) and swaps in `Int8Linear`, a tiny runtime module whose weight is
torchao's `Int8Tensor`. Its state dict holds plain tensors only (`weight_int8` [out, in] int8 and
`weight_scale` [out] fp32, plus the float bias), so a saved model dir is plain safetensors; `restore`
swaps the same modules back in on a fresh skeleton and loading rewraps the tensors, so `load_model(dir)`
reproduces the in-memory quantized model's outputs exactly. With `embeddings: true` (the default) the
`nn.Embedding` tables are stored as int8 rows too (`Int8Embedding`, torchao weight-only int8 per row):
half of MiniLM's weights are its word embeddings.

Speed on CPU (measured on an AMD EPYC with AVX512-VNNI + BF16, no AMX; see benchmarks/results/compress.md):
- torchao's eager int8 matmul goes through `torch._int_mm` (u8 x s8 on VNNI), ~0.7x the fp32 matmul
  at MiniLM's shapes, and the whole torchao-int8 model is slower than fp32 because of the dispatch and
  quantization ops around it. oneDNN's int8 GEMM (`onednn.qlinear_pointwise`, what inductor lowers
  torchao's int8 linear to under `torch.compile` with freezing) takes ~0.34x the fp32 matmul including
  per-token activation quantization, so `Int8Linear`'s eager forward calls it directly on the same
  torchao-quantized weight. Its activations must be uint8: an s8 x s8 call falls back to a reference
  kernel ~1000x slower on this CPU.
- Weight-only int8 has no fast CPU kernel here (`_weight_int8pack_mm` is a reference loop; torchao
  dequantizes then runs the fp32 matmul): `int8-weight` is a size step (4x smaller Linears), not a
  speed step.
- bf16 runs AVX512-BF16 GEMMs, ~0.43x the fp32 matmul; the whole model ~0.7x (attention, norms and
  elementwise work gain less).
- `compile: true` (torch.compile, inductor, freezing) fuses the elementwise work around the GEMMs, at a
  one-off compile cost of tens of seconds to minutes per input shape on 2 cores.
- `activations: static` fixes each layer's activation scale from the task's calibration data, with
  SmoothQuant's outlier migration (compress/calibrate.py). Quantizing is then a plain multiply that
  inductor fuses into the LayerNorm / GELU before each GEMM, instead of a per-token range reduction
  followed by a second pass. Compiled MiniLM: ~0.85x the dynamic int8 latency at cosine 0.996 (vs
  0.997); in eager mode the unfused quantize ops make it slower than dynamic.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import family_of
from ..families.sites import conv1d_to_linear, is_conv1d, is_linear_like
from .calibrate import input_ranges, smoothing
from .registry import Step, StepContext, register

log = logging.getLogger(__name__)


@dataclass
class Int8WeightOptions:
    """Options of `int8-weight` (and the part of `int8` they share): activations stay float."""

    compile: bool = False
    # fnmatch patterns of Linear module names to leave in float (e.g. "head" for a classifier head)
    skip: list[str] = field(default_factory=list)
    # also store nn.Embedding tables as int8 (per-row scale, dequantized row by row on lookup): half of
    # MiniLM's parameters are its word embeddings, so without this the file cannot shrink below ~0.6x
    embeddings: bool = True
    # "decoder": on an encoder-decoder model, quantize only the decoder side (its blocks, LM head and
    # token tables) and leave the encoder in float. Why: decoding at batch 1 reads every decoder weight
    # once per generated token (memory-bound, where 4x smaller weights pay off), while the encoder runs
    # once per input and is where int8 noise costs most in Whisper (noisy-audio WER 0.48 -> 0.77 with
    # the whole model in int8, benchmarks/results/speech.md). The family names the encoder.
    scope: Literal["all", "decoder"] = "all"


@dataclass
class Int8Options(Int8WeightOptions):
    # dynamic: each token's activation scale measured at run time (no calibration needed);
    # static: one scale per layer fixed from the task's calibration data (compress/calibrate.py), so
    # quantizing is a plain multiply fused into the op before each GEMM
    activations: Literal["dynamic", "static"] = "dynamic"
    # static only: SmoothQuant migration strength, the share of activation outliers moved into the
    # weights (0 = none). On MiniLM (benchmarks/results/smoothing.md) 0 gives cosine 0.983, 0.5 0.936,
    # 0.75 0.996, 0.85-0.9 0.998; the searches in benchmarks/results ran with this 0.75.
    smoothing: float = 0.75

    def __post_init__(self) -> None:
        if not 0 <= self.smoothing < 1:
            raise SlimformerError(f"option 'smoothing' must be in [0, 1), got {self.smoothing}")


@dataclass
class Bf16Options:
    compile: bool = False
    # "encoder": on an encoder-decoder model, only the encoder's blocks run in bf16 (each casts its
    # inputs in and its outputs back to fp32); the decoder stays as it is, free for `int8:scope=decoder`.
    # Why: the encoder is one long pass of large GEMMs (Whisper: ~500 frames), where bf16 pays on
    # AVX512-BF16 / AMX; batch-1 decoding is many tiny steps, where int8's 4x smaller weights pay.
    scope: Literal["all", "encoder"] = "all"


def _torchao():
    """Import torchao quietly: it logs a warning per optional CUDA extension that a CPU build lacks."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torchao.quantization as tq
    from torchao.quantization import Int8Tensor

    return tq, Int8Tensor


def _config(dynamic: bool):
    tq, _ = _torchao()
    # set_inductor_config=False: torchao would otherwise change process-wide inductor settings
    if dynamic:
        return tq.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    return tq.Int8WeightOnlyConfig(set_inductor_config=False)


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


class Int8Linear(nn.Module):
    """`y = x @ W^T + b` with an int8 weight (torchao `Int8Tensor`, one fp32 scale per output row).

    dynamic=True quantizes activations per token to int8 at run time (int8 x int8 GEMM, int32
    accumulate); dynamic=False keeps float activations (weight-only). static=True (with dynamic) uses
    calibrated scales instead: input channel j is quantized as `round(x_j / (smooth_j * scale))`, and
    the weight holds `W * smooth` (SmoothQuant, compress/calibrate.py). Shapes: x [..., in] -> [..., out].
    Saved as plain `weight_int8` [out, in] int8 + `weight_scale` [out] fp32 (+ `bias` [out]; static
    adds `input_smooth` [in] and `input_scale` []).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dynamic: bool,
                 dtype: torch.dtype = torch.float32, weight: Tensor | None = None, static: bool = False) -> None:
        super().__init__()
        if static and not dynamic:
            raise SlimformerError("static activation scales need int8 activations (step int8, not int8-weight)")
        self.in_features, self.out_features, self.dynamic, self.static = in_features, out_features, dynamic, static
        if weight is None:  # a skeleton for `restore`: loading the state dict fills it
            weight = _quantized_weight(torch.zeros(out_features, in_features, dtype=dtype), dynamic)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        if static:
            self.register_buffer("input_smooth", torch.ones(in_features))
            self.register_buffer("input_scale", torch.ones(()))
        self._packed: Any = None  # oneDNN-prepacked weight for the eager fast path, built on first use

    @classmethod
    def from_linear(cls, linear: nn.Linear, dynamic: bool, x_range: Tensor | None = None,
                    alpha: float = 0.0) -> Int8Linear:
        """Quantize `linear` with torchao (`quantize_`) and wrap it. `x_range` ([in] max |input| per
        channel on calibration data) makes the activation scales static, smoothed with strength `alpha`."""
        w = linear.weight.detach()
        smooth = None if x_range is None else smoothing(x_range, w, alpha)
        if smooth is not None:
            w = w * smooth.to(w.dtype)
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, dynamic,
                  linear.weight.dtype, _quantized_weight(w, dynamic), static=smooth is not None)
        if smooth is not None:
            out.input_smooth.copy_(smooth)
            out.input_scale.fill_(float((x_range / smooth).max().clamp(min=1e-8)) / 127)
        if linear.bias is not None:
            out.bias.data.copy_(linear.bias.detach())
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.static:
            return self._static_forward(x)
        if self.dynamic and not torch.compiler.is_compiling() and x.device.type == "cpu" and _onednn_available():
            return self._onednn_forward(x)
        return F.linear(x, self.weight, self.bias)

    def _static_forward(self, x: Tensor) -> Tensor:
        """Calibrated scales: quantizing is elementwise (no per-token range to find first), so under
        torch.compile it fuses into whatever produced `x`; the GEMM is `torch._int_mm` (int8 x int8 ->
        int32, VNNI), the op inductor emits for torchao's int8 linear, here eager as well."""
        shape = x.shape
        step = self.input_smooth * self.input_scale  # constants: folded away under freezing
        q = torch.round(x.reshape(-1, shape[-1]).float() / step).clamp_(-128, 127).to(torch.int8)
        y = torch._int_mm(q, self.weight.qdata.t()) * (self.weight.scale.reshape(-1) * self.input_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _onednn_forward(self, x: Tensor) -> Tensor:
        """The oneDNN int8 GEMM that inductor lowers torchao's int8 linear to, called eagerly.

        Activations are quantized per token, symmetric, as torchao does (scale = max|x| / 127.5), then
        shifted by +128 to uint8 with zero point 128: oneDNN's VNNI kernels take u8 x s8 (an s8 x s8
        call falls back to a reference kernel ~1000x slower on a CPU without AMX), and it subtracts the
        zero point's contribution exactly. oneDNN gets a unit activation scale; the per-token scale is
        applied to its fp32 output.
        """
        if self._packed is None:
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight.qdata, None)
            self._w_scale = self.weight.scale.reshape(-1).float().contiguous()
            self._one, self._zp = torch.ones((), dtype=torch.float32), torch.full((), 128, dtype=torch.int64)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        # torchao's symmetric int8 scale: max|x| / ((127 - (-128)) / 2), at least fp32 eps
        scale = x2.abs().amax(dim=-1, keepdim=True).div_(127.5).clamp_(min=torch.finfo(torch.float32).eps)
        q = (x2 * scale.reciprocal()).round_().clamp_(-128, 127).add_(128).to(torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise.tensor(
            q, self._one, self._zp, self._packed, self._w_scale, None, None, 1.0, 0, torch.float32, "none", [], "")
        y = y.mul_(scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def __getstate__(self) -> dict:
        # the prepacked weight is an opaque oneDNN tensor that cannot be copied or pickled: rebuild it
        state = dict(self.__dict__)
        state["_packed"] = None
        return state

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # plain tensors only, so the dir is plain safetensors (io.plain_state_dict refuses subclasses)
        destination[prefix + "weight_int8"] = self.weight.qdata
        destination[prefix + "weight_scale"] = self.weight.scale.reshape(-1)
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        if self.static:
            destination[prefix + "input_smooth"] = self.input_smooth
            destination[prefix + "input_scale"] = self.input_scale

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        names = (["weight_int8", "weight_scale"] + (["bias"] if self.bias is not None else [])
                 + (["input_smooth", "input_scale"] if self.static else []))
        for name in names:
            if prefix + name not in state_dict:
                missing_keys.append(prefix + name)
        if any(prefix + n not in state_dict for n in names):
            return
        qdata, scale = state_dict[prefix + "weight_int8"], state_dict[prefix + "weight_scale"]
        if qdata.dtype != torch.int8 or tuple(qdata.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"{prefix}weight_int8: expected int8 {(self.out_features, self.in_features)}, "
                              f"got {qdata.dtype} {tuple(qdata.shape)}")
            return
        w = self.weight
        w.qdata.copy_(qdata)
        w.scale.copy_(scale.reshape(w.scale.shape))
        if self.bias is not None:
            self.bias.data.copy_(state_dict[prefix + "bias"])
        if self.static:
            for name in ("input_smooth", "input_scale"):
                value = state_dict[prefix + name]
                if value.shape != getattr(self, name).shape:
                    error_msgs.append(f"{prefix}{name}: expected shape {tuple(getattr(self, name).shape)}, "
                                      f"got {tuple(value.shape)}")
                    return
                getattr(self, name).copy_(value)
        self._packed = None
        if strict:
            extra = [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in names
                     and "." not in k[len(prefix):]]
            unexpected_keys.extend(extra)

    def extra_repr(self) -> str:
        kind = ("int8 x int8 (static)" if self.static else "int8 x int8 (dynamic)") if self.dynamic \
            else "int8 weight-only"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


class Int8Embedding(nn.Module):
    """Embedding table stored as int8 rows with one fp32 scale per row (torchao weight-only int8,
    per row). A lookup gathers int8 rows and scales them: ids [...] -> [..., dim] float.
    Saved as plain `weight_int8` [num, dim] int8 + `weight_scale` [num] fp32."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, embed_scale: float = 1.0) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32))
        self.dtype = dtype
        self.embed_scale = embed_scale  # scaled word embeddings (BART, Marian: sqrt(d_model)) multiply lookups

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, shared: Int8Linear | None = None) -> Int8Embedding:
        """Quantize `emb`; with `shared` (an output projection tied to this table, already quantized to
        the same per-row int8) reuse its tensors, so a tied pair is stored once."""
        out = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.weight.dtype, _embed_scale(emb))
        if shared is not None:
            out.weight_int8 = shared.weight.qdata
            out.weight_scale = shared.weight.scale.reshape(-1)
            return out
        q = _quantized_weight(emb.weight.detach(), dynamic=False)
        out.weight_int8.copy_(q.qdata)
        out.weight_scale.copy_(q.scale.reshape(-1))
        return out

    @property
    def weight(self) -> Tensor:
        """The dequantized table `[num, dim]`, for model code that reads an embedding's `.weight` (its
        dtype, device or shape); built on each access, so lookups never pay for it."""
        return self.weight_int8.to(self.dtype) * self.weight_scale.unsqueeze(-1).to(self.dtype)

    def forward(self, ids: Tensor) -> Tensor:
        rows = F.embedding(ids, self.weight_int8).to(self.dtype)
        out = rows * self.weight_scale[ids].unsqueeze(-1).to(self.dtype)
        return out * self.embed_scale if self.embed_scale != 1.0 else out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def _quantized_weight(weight: Tensor, dynamic: bool) -> Tensor:
    """torchao's Int8Tensor for a float weight [out, in] (via `quantize_` on a throwaway Linear)."""
    tq, _ = _torchao()
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    lin.weight.data = weight
    tq.quantize_(lin, _config(dynamic))
    return lin.weight.data


def _named_linears(model: nn.Module, skip: list[str]) -> list[str]:
    """Names of the projections to quantize: `nn.Linear` and transformers' `Conv1D` (GPT-2)."""
    return [name for name, m in model.named_modules() if is_linear_like(m) and not _skipped(name, skip)]


def _seq2seq_stacks(model: nn.Module, step: str, scope: str) -> dict[str, nn.ModuleList]:
    """The family's block stacks of an encoder-decoder model, or one clear error for option `scope`."""
    stacks = family_of(model, f"step {step!r} scope={scope}").stacks(model)
    if not {"encoder", "decoder"} <= set(stacks):
        raise SlimformerError(f"option 'scope' of step {step!r}: {scope!r} needs an encoder-decoder model; "
                              f"{type(model).__name__} has stacks {sorted(stacks) or 'none'} (valid here: all)")
    return stacks


def _encoder_patterns(model: nn.Module, step: str) -> list[str]:
    """Name patterns of everything under the module holding the family's encoder stack (scope=decoder)."""
    encoder = _seq2seq_stacks(model, step, "decoder")["encoder"]
    name = next(n for n, m in model.named_modules() if m is encoder)
    holder = name.rpartition(".")[0]
    return [holder, holder + ".*"] if holder else [name, name + ".*"]


def _skipped(name: str, skip: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], p) for p in skip)


def _as_linear(model: nn.Module, name: str) -> nn.Linear:
    """The module at `name` as an `nn.Linear` (a Conv1D is swapped for its equal Linear first)."""
    module = model.get_submodule(name)
    if is_conv1d(module):
        module = conv1d_to_linear(module)
        _swap(model, name, module)
    if not isinstance(module, nn.Linear):
        raise SlimformerError(f"step int8: module {name!r} is a {type(module).__name__}, expected nn.Linear or "
                              "Conv1D (slimformer.json does not match this architecture)")
    return module


def _embed_scale(emb: nn.Embedding) -> float:
    scale = getattr(emb, "embed_scale", 1.0)
    return float(scale.item() if isinstance(scale, Tensor) else scale)


def _embeddings(model: nn.Module) -> dict[int, list[str]]:
    """Token tables int8 can replace, id -> every name the table is reachable at (T5's `shared` is also
    `encoder.embed_tokens` and `decoder.embed_tokens`: one table, swapped everywhere). Subclasses whose
    forward only scales the lookup (`embed_scale`) are included; other subclasses (positional tables
    with their own forward) are left in float."""
    out: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Embedding) and (type(m) is nn.Embedding or hasattr(m, "embed_scale")):
            out.setdefault(id(m), []).append(name)
    return out


def _quantize_embeddings(model: nn.Module, tied: dict[int, Int8Linear], skip: list[str]) -> list[str]:
    """Swap every token table (but those only reachable at skipped names) for an Int8Embedding; returns
    the first name of each."""
    first = []
    for names in _embeddings(model).values():
        if all(_skipped(n, skip) for n in names):
            continue
        emb = model.get_submodule(names[0])
        new = Int8Embedding.from_embedding(emb, tied.get(emb.weight.data_ptr()))
        for name in names:
            _swap(model, name, new)
        first.append(names[0])
    return first


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _compile(model: nn.Module) -> nn.Module:
    """torch.compile in place (state-dict keys unchanged). Freezing lets inductor treat weights as
    constants, which is what enables its int8 / weight-only lowerings and weight prepacking; it only
    takes effect under `torch.no_grad()` / `torch.inference_mode()` (how models are evaluated).

    Every compiled instance of a class adds entries to the cache of the class's shared `forward`; past
    dynamo's recompile limit (8) further instances silently run eager, which made a search (dozens of
    compiled candidates in one process) misjudge every later candidate. The limit is raised here."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    model.compile(options={"freezing": True})
    return model


def _quantize(model: nn.Module, opts: Int8WeightOptions, dynamic: bool, names: list[str],
              ranges: dict[str, Tensor] | None = None) -> dict[int, Int8Linear]:
    """Swap each Linear for an Int8Linear; returns them by their float weight's address, for tied tables
    (an unsmoothed projection holds exactly the per-row int8 its tied embedding would)."""
    by_weight: dict[int, Int8Linear] = {}
    for name in names:
        linear = _as_linear(model, name)
        x_range = ranges[name] if ranges is not None else None
        alpha = opts.smoothing if x_range is not None else 0.0  # only static int8 options carry one
        new = Int8Linear.from_linear(linear, dynamic, x_range, alpha)
        if not new.static:
            by_weight[linear.weight.data_ptr()] = new
        _swap(model, name, new)
    return by_weight


def _step_name(dynamic: bool) -> str:
    return "int8" if dynamic else "int8-weight"


def _check_activations(opts: Int8WeightOptions, dynamic: bool) -> bool:
    """True for static activation scales (only `int8`'s options offer them: weight-only activations stay
    float)."""
    return dynamic and isinstance(opts, Int8Options) and opts.activations == "static"


def _apply_int8(dynamic: bool):
    def apply(model: nn.Module, opts: Int8WeightOptions, ctx: StepContext) -> nn.Module:
        step = _step_name(dynamic)
        skip = opts.skip + (_encoder_patterns(model, step) if opts.scope == "decoder" else [])
        names = _named_linears(model, skip)
        if not names:
            raise SlimformerError(f"step {step!r}: {type(model).__name__} has no nn.Linear or Conv1D left to "
                                  f"quantize (skip={opts.skip}, scope={opts.scope})")
        for name in names:
            _as_linear(model, name)
        ranges = input_ranges(model, names, ctx, step) if _check_activations(opts, dynamic) else None
        ctx.state["modules"] = names
        log.info("quantizing %d Linear layers to int8 (%s)", len(names),
                 opts.activations if dynamic else "weight-only")
        tied = _quantize(model, opts, dynamic, names, ranges)
        if opts.embeddings:
            ctx.state["embeddings"] = _quantize_embeddings(model, tied, skip)
        return _compile(model) if opts.compile else model
    return apply


def _restore_int8(dynamic: bool):
    def restore(model: nn.Module, opts: Int8WeightOptions, state: dict) -> nn.Module:
        static = _check_activations(opts, dynamic)
        names = state.get("modules")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SlimformerError("step int8: state 'modules' in slimformer.json must be a list of module names")
        for name in names:
            try:
                linear = _as_linear(model, name)
            except AttributeError as e:
                raise SlimformerError(f"step int8: module {name!r} from slimformer.json not found in the model") from e
            _swap(model, name, Int8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                          dynamic, linear.weight.dtype, static=static))
        tables = {names[0]: names for names in _embeddings(model).values()}
        for name in state.get("embeddings") or []:
            if name not in tables:
                raise SlimformerError(f"step int8: module {name!r} from slimformer.json is not a token table "
                                      "of this model")
            emb = model.get_submodule(name)
            new = Int8Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.weight.dtype,
                                _embed_scale(emb))
            for alias in tables[name]:
                _swap(model, alias, new)
        return _compile(model) if opts.compile else model
    return restore


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """`value` with every floating tensor in it (nested in tuples, lists, dicts, HF outputs) cast to `dtype`."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):  # includes Hugging Face ModelOutput (an OrderedDict subclass)
        for k in list(value.keys()):
            value[k] = _cast(value[k], dtype)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value) if not hasattr(value, "_fields") else \
            type(value)(*(_cast(v, dtype) for v in value))
    return value


def _to_bf16_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _cast(args, torch.bfloat16), _cast(kwargs, torch.bfloat16)


def _to_fp32_outputs(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    return _cast(output, torch.float32)


def _apply_bf16(model: nn.Module, opts: Bf16Options, ctx: StepContext) -> nn.Module:
    """Weights and compute in bf16; inputs and outputs stay fp32 at the boundary of what was cast (the
    model, or each encoder block with scope=encoder), so callers (tasks, benchmarks) need not know."""
    for part in _encoder_blocks(model) if opts.scope == "encoder" else [model]:
        part.to(torch.bfloat16)
        part.register_forward_pre_hook(_to_bf16_inputs, with_kwargs=True)
        part.register_forward_hook(_to_fp32_outputs, with_kwargs=True)
    return _compile(model) if opts.compile else model


def _encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder's blocks, cast one by one: the modules around them (token tables, which T5 and BART
    share with the decoder; Whisper's convolutions) stay fp32, and each block casts at its boundary."""
    return list(_seq2seq_stacks(model, "bf16", "encoder")["encoder"])


def _restore_bf16(model: nn.Module, opts: Bf16Options, state: dict) -> nn.Module:
    return _apply_bf16(model, opts, StepContext())


register(Step("int8", Int8Options, _apply_int8(True),
              "int8 weights x int8 activations, quantized per token at run time or with calibrated scales "
              "(torchao, VNNI GEMMs)",
              restore=_restore_int8(True), makes_low_precision=True, role="precision", order=90, priority=0,
              detect=lambda m: any(isinstance(x, Int8Linear) and x.dynamic for x in m.modules())))
register(Step("int8-weight", Int8WeightOptions, _apply_int8(False),
              "int8 weights, float activations (torchao weight-only): 4x smaller Linears",
              restore=_restore_int8(False), makes_low_precision=True, role="precision", order=91, priority=9,
              legacy_options=("activations", "smoothing"),
              detect=lambda m: any(isinstance(x, Int8Linear) and not x.dynamic for x in m.modules())))
register(Step("bf16", Bf16Options, _apply_bf16, "all weights and activations in bfloat16 (AVX512-BF16)",
              restore=_restore_bf16, makes_low_precision=True, role="precision", order=92, priority=4,
              detect=lambda m: any(p.dtype == torch.bfloat16 for p in m.parameters())))
