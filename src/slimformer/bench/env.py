"""The machine and software a measurement was taken on, recorded beside every number.

The right recipe depends on the CPU: matrix units (AMX-BF16 / AMX-INT8) make bf16 and int8 GEMMs
several times faster than AVX-512, VNNI makes int8 dot products cheap without them. So every result
carries the features that decide which path is fast, and `compress.presets` picks recipes by them.
Everything reads the kernel's flag list through `read_cpu_flags`, the one function a test fakes.
"""

from __future__ import annotations

import os
import platform
from functools import cache

import torch

from ..io import versions

# feature name in our records -> flag in /proc/cpuinfo
FEATURES = {"amx_bf16": "amx_bf16", "amx_int8": "amx_int8", "avx512_vnni": "avx512_vnni",
            "avx512_bf16": "avx512_bf16", "avx2": "avx2"}
OPTIONAL_PACKAGES = ("onnxruntime", "openvino", "nncf")


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
    """The class of CPU a measured recipe transfers within: "amx", "avx512-vnni" or "avx2" ("other" below).

    A recipe measured on one kind is never assumed best on another (AMX changes which precision wins)."""
    f = cpu_features() if features is None else features
    if f.get("amx_bf16") and f.get("amx_int8"):
        return "amx"
    if f.get("avx512_vnni"):
        return "avx512-vnni"
    return "avx2" if f.get("avx2") else "other"


def cpu_flags() -> list[str]:
    """The feature names this CPU has, for short listings (kept for older result files' `cpu_flags`)."""
    f = cpu_features()
    return [name for name in FEATURES if f[name]]


def features_line(env: dict) -> str:
    """One header line naming the CPU and its decisive features, from a results file's `env`."""
    f = env.get("cpu_features") or {}
    if not f:  # a results file written before features were recorded
        flags = env.get("cpu_flags") or []
        return f"CPU {env.get('cpu', '?')} ({env.get('cores', '?')} cores; flags {', '.join(flags) or '?'})"
    yes = [name.upper().replace("_", "-") for name in FEATURES if f.get(name)]
    no = [name.upper().replace("_", "-") for name in ("amx_bf16", "amx_int8") if not f.get(name)]
    return (f"CPU {f.get('model', env.get('cpu', '?'))}, {f.get('cores', env.get('cores', '?'))} cores, "
            f"kind {env.get('cpu_kind', cpu_kind(f))}: {', '.join(yes) or 'none of AMX/VNNI/AVX2'}"
            + (f"; no {', no '.join(no)}" if no else ""))


def environment() -> dict:
    features = cpu_features()
    env = {
        "cpu": cpu_model(),
        "cpu_flags": [name for name in FEATURES if features[name]],
        "cpu_features": features,
        "cpu_kind": cpu_kind(features),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": versions(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    from importlib import metadata

    for pkg in OPTIONAL_PACKAGES:
        try:
            env["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # optional package: absent is fine
            pass
    return env
