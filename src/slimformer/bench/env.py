"""The machine and software a measurement was taken on, recorded beside every number.

The right recipe depends on the CPU, so every results file carries the features that decide which
path is fast (`slimformer.cpu`: AMX-BF16, AMX-INT8, AVX512-VNNI, AVX512-BF16, AVX2, cores, model) and
its kind, and every table header names them (`features_line`).
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from ..cpu import FEATURES, cpu_features, cpu_kind, cpu_model, read_cpu_flags
from ..io import versions

__all__ = ["cpu_features", "cpu_flags", "cpu_kind", "cpu_model", "environment", "features_line", "read_cpu_flags"]
OPTIONAL_PACKAGES = ("onnxruntime", "openvino", "nncf")


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
        with contextlib.suppress(metadata.PackageNotFoundError):  # optional package: absent is fine
            env["versions"][pkg] = metadata.version(pkg)
    return env
