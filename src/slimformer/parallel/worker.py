"""The program torchrun starts on every rank: `python -m slimformer.parallel.worker RUN_DIR`.

It joins the process group (gloo on CPU, NCCL on GPU), starts the heartbeat the launcher watches,
runs the job named in `RUN_DIR/spec.json` and, on rank 0, writes the job's result there.

`SLIMFORMER_FAULT=die:RANK:STEP` (or `hang:RANK:STEP`) makes that rank SIGKILL (or SIGSTOP) itself
when it reaches that step: how the fault tests exercise the launcher with a real dead or frozen process
(`SLIMFORMER_FAULT_MARK=FILE` records when, so a test can time the reaction).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from .. import atomic
from .launch import RESULT, SPEC, heartbeat_path

log = logging.getLogger(__name__)


class Worker:
    """This rank's view of the job: rank, world size, device, and the heartbeat it keeps."""

    def __init__(self, run_dir: Path, device: torch.device):
        self.run_dir = run_dir
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device
        self.step = 0
        self.progress_t = time.time()
        self._done = False
        self._fault = parse_fault(os.environ.get("SLIMFORMER_FAULT", ""))
        self._stop = threading.Event()
        self._write_beat()
        threading.Thread(target=self._beat_loop, daemon=True, name="heartbeat").start()

    def _write_beat(self) -> None:
        path = heartbeat_path(self.run_dir, self.rank)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "rank": self.rank, "step": self.step, "done": self._done,
                                   "beat_t": time.time(), "progress_t": self.progress_t}))
        os.replace(tmp, path)  # no fsync: a heartbeat needs to be current, not durable

    def _beat_loop(self) -> None:
        while not self._stop.wait(0.5):
            self._write_beat()

    def progress(self, step: int | None = None) -> None:
        """Call at every step boundary (and inside long phases): the launcher's hang detector reads it.
        Without `step`, counts one more unit of progress."""
        self.step = self.step + 1 if step is None else step
        self.progress_t = time.time()
        if self._fault and self._fault[1] == self.rank and self.step >= self._fault[2]:
            kind = self._fault[0]
            log.warning("rank %d: injected fault %r at step %d", self.rank, kind, self.step)
            sys.stderr.flush()
            if os.environ.get("SLIMFORMER_FAULT_MARK"):  # lets a test time the job's reaction from here
                atomic.write_text(os.environ["SLIMFORMER_FAULT_MARK"], f"{time.time()}")
            os.kill(os.getpid(), signal.SIGKILL if kind == "die" else signal.SIGSTOP)

    def finish(self) -> None:
        self._done = True
        self._stop.set()
        self._write_beat()


def parse_fault(text: str) -> tuple[str, int, int] | None:
    if not text:
        return None
    kind, rank, step = text.split(":")
    if kind not in ("die", "hang"):
        raise ValueError(f"SLIMFORMER_FAULT kind must be die or hang, got {kind!r}")
    return kind, int(rank), int(step)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def run_spec(spec: dict[str, Any], worker: Worker) -> dict[str, Any]:
    """Run one job, or with `job: multi` several in one launch (start-up is the slow part of a test)."""
    if spec["job"] == "multi":
        return {"job": "multi", "results": [run_spec(sub, worker) for sub in spec["jobs"]]}
    jobs = importlib.import_module(f"{__package__}.jobs")  # on use: torch.distributed pieces import slowly
    return jobs.JOBS[spec["job"]](spec, worker)


@record
def main(run_dir: Path) -> None:
    spec: dict[str, Any] = json.loads((run_dir / SPEC).read_text())
    logging.basicConfig(level=logging.INFO if spec.get("verbose") else logging.WARNING,
                        format=f"[rank{os.environ.get('RANK', '?')}] %(message)s")
    torch.set_num_threads(int(spec.get("threads", 1)))
    device = pick_device(spec.get("device", "auto"))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(seconds=float(spec.get("pg_timeout", 300))))
    worker = Worker(run_dir, device)
    try:
        result = run_spec(spec, worker)
        if worker.rank == 0:
            atomic.write_text(run_dir / RESULT, json.dumps(result, indent=2))
        dist.barrier()
    finally:
        worker.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
