"""What this CPU can do fast: the features that decide which compression path wins on it.

Matrix units (AMX-BF16 / AMX-INT8) make bf16 and int8 GEMMs several times faster than AVX-512; VNNI
makes int8 dot products cheap without them. Results record these (`bench.env`) and recipe presets are
picked by them (`compress.presets`), so this module sits below both. Everything reads the kernel's
flag list through `read_cpu_flags`, the one function a test fakes.
"""

from __future__ import annotations

import os
import platform
from functools import cache

# feature name in our records -> flag in /proc/cpuinfo
FEATURES = {"amx_bf16": "amx_bf16", "amx_int8": "amx_int8", "avx512_vnni": "avx512_vnni",
            "avx512_bf16": "avx512_bf16", "avx2": "avx2"}


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def read_cpu_flags() -> frozenset[str]:
    """Every flag the kernel reports for the first CPU (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> dict[str, bool | int | str]:
    """The features that decide which compression path is fast, plus core count and CPU model."""
    have = read_cpu_flags()
    out: dict[str, bool | int | str] = {name: flag in have for name, flag in FEATURES.items()}
    out["cores"] = os.cpu_count() or 1
    out["model"] = cpu_model()
    return out


def cpu_kind(features: dict | None = None) -> str:
    """The class of CPU a measured recipe transfers within: "amx", "avx512-vnni", "avx2" or "other".

    A recipe measured on one kind is never assumed best on another (AMX changes which precision wins)."""
    f = cpu_features() if features is None else features
    if f.get("amx_bf16") and f.get("amx_int8"):
        return "amx"
    if f.get("avx512_vnni"):
        return "avx512-vnni"
    return "avx2" if f.get("avx2") else "other"
