"""Launch a parallel job with torchrun (`python -m torch.distributed.run`) and watch it.

torchrun already ends the job when a worker *exits* (its monitor polls every 0.1 s). What it cannot see
is a worker that *hangs*: the others then wait in a collective for the process group timeout (30 min by
default). So every worker runs a heartbeat thread (`parallel.worker`) that writes one small file per rank
in the run dir; this launcher reads them and ends the whole job, naming the rank, when a rank stops
beating (a frozen process: `hang_timeout`, 20 s) or when no rank has made progress for `stall_timeout`
(alive but stuck, e.g. a deadlock; longer, because one training step of a big model may be slow).
Workers live in their own sessions (torchrun starts them with `start_new_session`), so the launcher
kills torchrun's group *and* each worker pid it learned from the heartbeats: nothing outlives the job.

A user with several machines passes torchrun's own flags (`--nnodes`, `--rdzv-endpoint`, ...) through
`torchrun_args`; nothing here replaces torchrun's rendezvous or transport. The rendezvous (not
`--node-rank`) decides which node runs global rank 0, whose result is the job's; the other nodes' launches
end with a marker saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import SlimformerError

log = logging.getLogger(__name__)

RESULT = "result.json"
SPEC = "spec.json"


class JobFailed(SlimformerError):
    """A launched job ended badly (a rank died, hung or raised); the message names the rank. `log` holds
    the last lines the workers printed (a quiet launch kept them off stderr: the caller shows them)."""

    def __init__(self, message: str, log: list[str] | None = None):
        super().__init__(message)
        self.log = log or []


LOG_LINES = 40  # worker output kept with a failure


def worker_lines(lines: list[str]) -> list[str]:
    """The last lines the workers themselves printed (`[rankN]...`: their log format, and torch's prefix on
    a worker's traceback), rather than torchrun's own report; all output if no worker line is there."""
    own = [line for line in lines if line.startswith("[rank")]
    return (own or lines)[-LOG_LINES:]


@dataclass
class LaunchConfig:
    nproc: int
    torchrun_args: list[str] = field(default_factory=list)
    hang_timeout: float = 20.0  # seconds without a heartbeat (frozen process) before a rank counts as hung
    stall_timeout: float = 120.0  # seconds with no rank making progress (alive but stuck, e.g. a deadlock)
    timeout: float | None = None  # whole-job wall-clock limit
    env: dict[str, str] = field(default_factory=dict)
    quiet: bool = False  # keep worker output off our stderr (it is still kept for the error message)


def heartbeat_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"rank{rank}.beat"


def read_beats(run_dir: Path) -> dict[int, dict[str, Any]]:
    beats = {}
    for p in run_dir.glob("rank*.beat"):
        try:
            beats[int(p.stem[4:])] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: read it next round
    return beats


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: it no longer runs and its parent will reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def kill_all(proc: subprocess.Popen, pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM torchrun's group and every worker, then SIGKILL whatever is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for target in [*pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (proc.poll() is None or any(pid_alive(p) for p in pids)):
            time.sleep(0.05)
        if proc.poll() is not None and not any(pid_alive(p) for p in pids):
            break
    proc.wait()


PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker")


def torchrun_failed_rank(lines: list[str]) -> str | None:
    """The rank that caused the failure, from torchrun's failure report.

    torchrun's 'Root Cause' is the failure it *observed* first, which is often a healthy rank that
    raised because its peer vanished. So: prefer a rank killed by a signal (other than the SIGTERM
    torchrun itself sends while cleaning up), then a rank whose error is not a lost peer, then the root cause.
    """
    text = "\n".join(lines)
    blocks = re.split(r"\n\s*\[\d+\]:\s*\n", text.split("Failures:", 1)[-1])
    failures = []
    for block in blocks:
        rank = re.search(r"rank\s*:\s*(\d+)", block)
        code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
        if rank and code:
            failures.append((int(rank.group(1)), int(code.group(1)), any(p in block for p in PEER_GONE)))
    if not failures:
        return None
    signalled = [f for f in failures if f[1] < 0 and -f[1] != signal.SIGTERM]
    own = [f for f in failures if f[1] > 0 and not f[2]]
    rank, code, _ = (signalled or own or failures[-1:])[0]
    if code < 0 and -code in signal.valid_signals():
        return f"rank {rank} was killed by signal {signal.Signals(-code).name}"
    return f"rank {rank} exited with code {code}"


def worker_error(lines: list[str], problem: str) -> str | None:
    """The last exception line a worker printed (`[rank1]: ValueError: ...`), preferring the rank that
    `problem` names (the others usually only report that their peer went away)."""
    named = re.match(r"rank (\d+)", problem)
    found = None
    for line in reversed(lines):
        m = re.match(r"\[rank(\d+)\]:\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Failed)\b.*)", line.strip())
        if m and (named is None or m.group(1) == named.group(1)):
            return f"{m.group(2)[:300]}"
        found = found or (m and f"rank {m.group(1)}: {m.group(2)[:300]}")
    return found


def launch(job: str, spec: dict[str, Any], config: LaunchConfig) -> dict[str, Any]:
    """Run `parallel.worker` under torchrun with `spec`; return rank 0's result dict (on a node of a
    multi-node job that ran other ranks: `{"remote": True, ...}`, see `read_result`).

    Raises `JobFailed` naming the rank when a worker dies, hangs or raises, with the workers' last lines;
    by then every process of the job has ended.
    """
    with tempfile.TemporaryDirectory(prefix="slimformer-parallel-") as tmp:
        run_dir = Path(tmp)
        atomic.write_text(run_dir / SPEC, json.dumps({"job": job, **spec}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config.nproc),
               *config.torchrun_args]
        if not any(a.startswith(("--rdzv", "--nnodes", "--master")) for a in config.torchrun_args):
            cmd += ["--standalone"]  # one machine: a free port, no rendezvous server to set up
        cmd += ["-m", "slimformer.parallel.worker", str(run_dir)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **config.env}
        env.setdefault("OMP_NUM_THREADS", str(spec.get("threads", 1)))
        log.info("launching: %s", " ".join(cmd))
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, text=True, errors="replace")
        tail: deque[str] = deque(maxlen=400)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if not config.quiet:
                    sys.stderr.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        first_dead: dict[int, float] = {}
        try:
            problem = watch(proc, run_dir, config, start, first_dead)
        except BaseException:  # Ctrl-C or any error here: take the whole job down before leaving
            kill_all(proc, [b["pid"] for b in read_beats(run_dir).values() if "pid" in b])
            raise
        pids = [b["pid"] for b in read_beats(run_dir).values() if "pid" in b]
        if problem is not None or proc.poll() is None:
            kill_all(proc, pids)
        else:
            kill_all(proc, pids, grace=5.0)  # normal exit: only reaps, nothing is left to kill
        reader.join(timeout=5)
        lines = list(tail)
        elapsed = time.monotonic() - start
        if problem is None and proc.returncode != 0:
            problem = torchrun_failed_rank(lines)
            if problem is None and first_dead:
                problem = f"rank {min(first_dead, key=first_dead.get)} died"
            problem = problem or f"torchrun exited with code {proc.returncode}"
        if problem is not None:
            cause = worker_error(lines, problem)
            msg = f"parallel job {job!r} failed after {elapsed:.1f} s: {problem}"
            if cause and not problem.startswith(cause):
                msg += f" ({cause})"
            raise JobFailed(msg, worker_lines(lines))
        return read_result(job, run_dir, lines)


def read_result(job: str, run_dir: Path, lines: list[str]) -> dict[str, Any]:
    """Global rank 0's result. On a node of a multi-node job that did not run rank 0 there is none: when
    every rank here finished, the result is `{"job", "remote": True, "ranks"}` (it is on rank 0's node)."""
    result_path = run_dir / RESULT
    if result_path.exists():
        return json.loads(result_path.read_text())
    beats = read_beats(run_dir)
    if beats and 0 not in beats and all(b.get("done") for b in beats.values()):
        return {"job": job, "remote": True, "ranks": sorted(beats)}
    raise JobFailed(f"parallel job {job!r} ended without a result (see the worker log)", worker_lines(lines))


def watch(proc: subprocess.Popen, run_dir: Path, config: LaunchConfig, start: float,
          first_dead: dict[int, float]) -> str | None:
    """Poll until torchrun exits; return a description of the first fault seen, or None.

    `first_dead` collects, per rank, when its process was first seen gone without finishing.
    """
    while proc.poll() is None:
        time.sleep(0.1)
        now = time.time()
        beats = read_beats(run_dir)
        for rank, b in beats.items():
            if b.get("done"):
                continue
            if not pid_alive(b["pid"]):
                first_dead.setdefault(rank, time.monotonic())
            elif now - b["beat_t"] > config.hang_timeout:
                return f"rank {rank} hung: no heartbeat for {now - b['beat_t']:.1f} s (pid {b['pid']}, frozen)"
        live = {r: b for r, b in beats.items() if not b.get("done")}
        if live:
            stalled = {r: now - b["progress_t"] for r, b in live.items()}
            if min(stalled.values()) > config.stall_timeout:
                worst = max(stalled, key=stalled.get)
                steps = ", ".join(f"rank {r} at step {live[r]['step']}" for r in sorted(live))
                return (f"rank {worst} hung: no progress on any rank for {min(stalled.values()):.1f} s, rank {worst} "
                        f"stopped first ({steps})")
        if first_dead:
            rank = min(first_dead, key=first_dead.get)
            if time.monotonic() - first_dead[rank] > 10:  # torchrun should have ended the job by now
                return f"rank {rank} died (pid {beats[rank]['pid']})"
        if config.timeout and time.monotonic() - start > config.timeout:
            return f"job exceeded its {config.timeout:.0f} s limit"
    return None
