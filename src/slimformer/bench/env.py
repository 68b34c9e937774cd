"""The machine and software a measurement was taken on, recorded beside every number."""

from __future__ import annotations

import os
import platform
from functools import cache

import torch

from ..io import versions


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


def cpu_flags() -> list[str]:
    wanted = ("avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "avx512f")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def environment() -> dict:
    env = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": versions(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for pkg in ("onnxruntime",):
        try:
            from importlib import metadata

            env["versions"][pkg] = metadata.version(pkg)
        except Exception:  # noqa: BLE001 - optional package: absent is fine
            pass
    return env
