"""Peak memory of one variant, measured as resident set size (RSS) in a fresh subprocess.

Measuring in the benchmarking process itself would be wrong twice over: the allocator keeps pages
that earlier variants freed, and the peak high-water mark never goes down. So each variant runs in
its own `python -m slimformer.bench.memory SPEC` process: it imports its libraries, resets the
kernel's high-water mark (`/proc/self/clear_refs`), builds the variant (loading weights counts) and
runs it a few times. What is reported is the peak RSS above the interpreter-plus-libraries baseline:
the memory this variant costs, comparable across variants.

A spec names a factory `"package.module:function"` that returns a zero-argument callable, plus its
keyword arguments; the factory is imported before the mark is reset, so library code does not count.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SlimformerError

log = logging.getLogger(__name__)


def _status_mb(field: str) -> float:
    """A `/proc/self/status` field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} not in /proc/self/status")
    return int(match.group(1)) / 1024


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    """Fallback where the high-water mark cannot be reset: sample RSS every millisecond."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss / 2**20
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            time.sleep(0.001)

    def finish(self) -> float:
        self.stop.set()
        self.thread.join()
        return max(self.peak, self.proc.memory_info().rss / 2**20)


def resolve(factory: str) -> Callable[..., Callable[[], object]]:
    module, _, name = factory.partition(":")
    if not name:
        raise SlimformerError(f"memory factory {factory!r} is not 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def _init_runtime() -> None:
    """Pay torch's one-time costs (thread pool, kernel dispatch tables) before the baseline is taken:
    they are the same for every variant and would otherwise be charged to whichever runs first."""
    import torch

    with torch.inference_mode():
        x = torch.randn(64, 64)
        torch.nn.functional.linear(x, x).softmax(-1).sum().item()
        torch.nn.functional.layer_norm(x, (64,)).sum().item()


def run_spec(spec: dict[str, Any]) -> dict[str, float]:
    """Inside the fresh process: build the variant, run it, return baseline and peak RSS in MiB."""
    import torch

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    for module in spec.get("preload", []):
        importlib.import_module(module)
    factory = resolve(spec["factory"])
    _init_runtime()
    exact = _reset_peak()
    sampler = None if exact else _Sampler()
    base = _status_mb("VmRSS")
    fn = factory(**spec.get("kwargs", {}))
    with torch.inference_mode():
        for _ in range(int(spec.get("calls", 3))):
            fn()
    peak = _status_mb("VmHWM") if exact else sampler.finish()
    return {"base_mb": base, "peak_rss_mb": peak, "peak_mem_mb": max(0.0, peak - base)}


def peak_memory(factory: str, kwargs: dict[str, Any] | None = None, calls: int = 3, threads: int | None = None,
                preload: list[str] | None = None, timeout: float = 900) -> dict[str, float]:
    """Peak RSS (MiB) of building and running one variant, measured in a fresh subprocess.

    preload: modules imported before the baseline is taken (library code is not the variant's cost).
    Returns `{"peak_mem_mb": above-baseline peak, "peak_rss_mb": absolute peak, "base_mb": baseline}`.
    """
    spec = {"factory": factory, "kwargs": kwargs or {}, "calls": calls, "threads": threads,
            "preload": preload or []}
    cmd = [sys.executable, "-m", "slimformer.bench.memory", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SlimformerError(f"memory measurement of {factory} took over {timeout:.0f} s") from e
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SlimformerError(f"memory measurement of {factory} failed: {tail[0]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- factories (run inside the fresh process) -------------------------------------------------

def model_dir_runner(path: str, batch: int, seq_len: int) -> Callable[[], object]:
    """Load a saved model dir and return a call on synthetic inputs of the benchmark's shape."""
    from .. import io
    from .inputs import example_inputs

    model = io.load_model_dir(Path(path))
    args, kwargs = example_inputs(model, batch=batch, seq_len=seq_len)
    return lambda: model(*args, **kwargs)


def onnx_runner(path: str, inputs: str, threads: int) -> Callable[[], object]:
    """Open an ONNX Runtime session on `path` and return a call on the saved benchmark inputs."""
    from .baselines import ort_session

    values = _saved_inputs(inputs)
    session = ort_session(Path(path), threads)
    names = [i.name for i in session.get_inputs()]
    feeds = {n: v.numpy() for n, v in zip(names, values, strict=True)}
    return lambda: session.run(None, feeds)


def openvino_runner(path: str, inputs: str, threads: int, precision: str | None) -> Callable[[], object]:
    """Compile an OpenVINO IR as the baseline did and return a call on the saved benchmark inputs."""
    from .baselines import ov_compile

    values = _saved_inputs(inputs)
    compiled = ov_compile(Path(path), threads, precision)
    feeds = {p.get_any_name(): v.numpy() for p, v in zip(compiled.inputs, values, strict=True)}
    return lambda: compiled(feeds)


def _saved_inputs(path: str) -> list:
    """The benchmark inputs saved by `runner.save_inputs`, in call order."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        order = json.loads(f.metadata()["order"])
        return [f.get_tensor(k) for k in order]


def allocation_probe(mb: float) -> Callable[[], object]:
    """A callable that allocates and touches `mb` MiB: the harness's own calibration (see tests)."""
    import torch

    def run() -> float:
        x = torch.ones(int(mb * 2**20) // 4, dtype=torch.float32)
        return float(x[-1])

    return run


def main(argv: list[str]) -> None:
    print(json.dumps(run_spec(json.loads(argv[0]))))


if __name__ == "__main__":
    main(sys.argv[1:])
