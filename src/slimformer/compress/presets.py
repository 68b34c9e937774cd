"""`--recipe fast` and `--recipe small`: the measured best recipe for this task on this kind of CPU.

Which recipe is fastest depends on the CPU. On the AMD EPYC we develop on (AVX512-VNNI and
AVX512-BF16, no AMX) int8 with static scales wins; on an Intel Xeon with AMX the same recipe is 1.5x
slower than OpenVINO and plain `bf16:compile=true` wins (issue 19). So a preset name resolves by
(task, CPU kind) to a concrete recipe from PICKS, a small table of measured picks, each naming the
CPU it was measured on and where the numbers are. Where nothing was measured for this kind, a rule
stands in (bf16 where AMX is, int8 where VNNI is) and says plainly that it is a rule. A recipe is never
carried from one CPU kind to another as if it had been measured there.

The resolved, concrete recipe is what gets applied and recorded (`slimformer.json` lists its steps);
the preset name itself is never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cpu import cpu_features, cpu_kind

PRESETS = ("fast", "small")
ANY = "any"  # a pick whose criterion (size on disk) does not depend on the CPU kind


@dataclass(frozen=True)
class Pick:
    preset: str          # "fast" | "small"
    task: str | None     # None: any task (and models without one)
    kind: str            # env.cpu_kind() it was measured on, or ANY
    recipe: str          # inline recipe
    measured_on: str     # the CPU (and where the numbers are), or "rule: ..." when not measured


_AMD = "AMD EPYC, 2 cores, AVX512-VNNI + AVX512-BF16, no AMX"
_XEON = "Intel Xeon, 2 threads, AMX-BF16 + AMX-INT8"
PICKS: tuple[Pick, ...] = (
    Pick("fast", "embedding", "avx512-vnni", "bf16-attention+int8:activations=static,compile=true",
         f"{_AMD}: cosine 0.996, 0.285x fp32 in the search run, 0.58x in peers.md (OpenVINO int8 faster)"),
    Pick("fast", "digits", "avx512-vnni", "prune-layers:ratio=0.5+distill+int8:activations=static,compile=true",
         f"{_AMD}: -0.28 pt, 3.02x fp32 (benchmarks/results/search_digits.md)"),
    Pick("fast", "fashion", "avx512-vnni", "tome:schedule=keep,keep_ratio=0.25+distill:epochs=6+int8:compile=true",
         f"{_AMD}: -0.77 pt, 2.13x fp32 (benchmarks/results/fashion.md)"),
    Pick("fast", "embedding", "amx", "bf16:compile=true",
         f"{_XEON}: 0.23x fp32, OpenVINO int8 0.25x (MiniLM b32x128, reported in issue 19)"),
    Pick("small", "embedding", ANY, "int8",
         f"{_AMD}: 0.253x fp32 size at cosine 0.997 (benchmarks/results/compress.md)"),
    Pick("small", "digits", ANY, "prune-layers:ratio=0.5+distill+int8:activations=static,compile=true",
         f"{_AMD}: 0.16x fp32 size at -0.28 pt (benchmarks/results/search_digits.md)"),
    Pick("small", "fashion", ANY, "int8", f"{_AMD}: 0.31x fp32 size at -0.01 pt (benchmarks/results/fashion.md)"),
)


def rule(preset: str, task: str | None, kind: str) -> Pick:
    """What stands in where nothing was measured: the precision this kind of CPU runs fastest natively."""
    if preset == "small":
        return Pick(preset, task, ANY, "int8", "rule, not measured: int8 weights are 1/4 of fp32 on disk")
    if kind == "amx":
        return Pick(preset, task, kind, "bf16:compile=true", "rule, not measured: AMX runs bf16 GEMMs natively")
    # dynamic int8: static scales need calibration data a task may not have, and were only measured
    # where a pick above says so
    int8 = "int8:compile=true"
    if kind == "avx512-vnni":
        return Pick(preset, task, kind, int8, "rule, not measured: VNNI makes int8 dot products cheap")
    return Pick(preset, task, kind, int8, "rule, not measured: int8 halves the memory traffic of bf16")


def resolve(preset: str, task: str | None = None, features: dict | None = None) -> Pick:
    """The pick for `preset` on this task and CPU (features: `env.cpu_features()`, faked in tests)."""
    kind = cpu_kind(cpu_features() if features is None else features)
    for p in PICKS:
        if p.preset == preset and p.task == task and p.kind in (kind, ANY):
            return p
    return rule(preset, task, kind)


def expand(spec: object, task: str | None = None) -> object:
    """A preset name turned into its concrete inline recipe; anything else returned unchanged."""
    if isinstance(spec, str) and spec.strip() in PRESETS:
        return resolve(spec.strip(), task).recipe
    return spec


def describe_presets(tasks: list[str | None]) -> list[tuple[str, str, str, str]]:
    """(preset, task, concrete recipe, measured on) on this CPU, for `slimformer models`."""
    picks = [(name, task, resolve(name, task)) for name in PRESETS for task in tasks]
    return [(name, task or "(none)", pick.recipe, pick.measured_on) for name, task, pick in picks]
