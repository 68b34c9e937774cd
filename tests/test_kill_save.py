"""SIGKILL in the middle of a save: the previous model dir stays intact and loadable, and a half-written
staging dir (`.NAME.*.partial`) is never taken for a model.

Most kills hit a forked child inside `io.save_model` at uniformly random points of a measured save (cheap:
no new interpreter); a few hit real `slimformer compress` / `slimformer train` processes the moment
their staging dir appears. After every kill the target must hold exactly the old model or exactly the
new one (bit for bit), never anything else: that count is `lost`, and it must be 0.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _hardening import flush, record, scale

from slimformer import io
from slimformer.errors import SlimformerError
from slimformer.models import build_model

SECTION = "kill-save"
# ~1.3 M parameters (5 MB): a save long enough to land kills inside it, a load short enough to check 30 times.
ENCODER = {"vocab_size": 4000, "max_len": 64, "d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512}


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    flush(SECTION)


def fingerprint(d: Path) -> str:
    return io.read_meta(d)["sha256"]


def is_model(sha: str):
    return lambda d: fingerprint(d) == sha


def check_after_kill(target: Path, allowed: dict) -> str:
    """Which of `allowed` ({name: predicate(dir) -> bool}, or {"absent": None}) the target is, after
    checking that it loads and that no other entry beside it passes for a model. Records the outcome."""
    for entry in target.parent.iterdir():
        if entry == target:
            continue
        assert entry.name.startswith(f".{target.name}.") and entry.name.endswith((".partial", ".tmp")), entry
        with pytest.raises(SlimformerError, match="unfinished|neither a slimformer|missing"):
            io.load(entry)
    if not target.exists():
        assert "absent" in allowed, "the previous model dir is gone"
        record(SECTION, "absent-as-before")
        return "absent"
    try:
        io.load_model_dir(target)  # checksum verified: a dir that loads is a complete one
    except SlimformerError as e:
        record(SECTION, "lost")
        raise AssertionError(f"target unloadable after kill: {e}") from e
    for name, holds in allowed.items():
        if holds is not None and holds(target):
            record(SECTION, f"holds-{name.rstrip('01')}")
            return name
    record(SECTION, "lost")
    raise AssertionError("target holds neither the old nor the new model")


def remove_partials(parent: Path) -> int:
    import shutil

    stale = [p for p in parent.iterdir() if p.name.endswith(".partial")]
    for p in stale:
        shutil.rmtree(p)
    return len(stale)


def test_sigkill_during_save_model_at_random_points(tmp_path):
    torch.manual_seed(0)
    models = [build_model("encoder", ENCODER), build_model("encoder", ENCODER)]
    shas = []
    for i, m in enumerate(models):
        shas.append(fingerprint(io.save_model(m, tmp_path / f"ref{i}")))
    times = []
    for i in range(3):
        start = time.perf_counter()
        io.save_model(models[1], tmp_path / f"timing{i}")
        times.append(time.perf_counter() - start)
    save_s = sorted(times)[1]
    work = tmp_path / "work"
    work.mkdir()
    target = work / "model"
    io.save_model(models[0], target)
    current = 0
    rng = random.Random(0)
    kills = scale(30)
    for i in range(kills):
        first_save = i % 10 == 9  # now and then the target does not exist yet
        if first_save:
            import shutil

            shutil.rmtree(target)
        new = 1 - current
        pid = os.fork()
        if pid == 0:  # child: save and leave without running any of pytest's cleanup
            try:
                io.save_model(models[new], target)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 2 * save_s))  # before, during and just after the swap
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        allowed = {"absent": None} if first_save else {f"old{current}": is_model(shas[current])}
        allowed[f"new{new}"] = is_model(shas[new])
        held = check_after_kill(target, allowed)
        if held.startswith("new"):
            current = new
        elif held == "absent":
            io.save_model(models[current], target)
    record(SECTION, f"stale-partials-cleaned:{remove_partials(work)}")
    # stale staging dirs never block or confuse the next save
    io.save_model(models[0], target)
    assert fingerprint(target) == shas[0]


def wait_for_staging(proc: subprocess.Popen, parent: Path, name: str, limit: float) -> bool:
    """Poll until a `.NAME.*.partial` dir appears (True) or the process exits / time runs out (False)."""
    deadline = time.monotonic() + limit
    prefix = f".{name}."
    while time.monotonic() < deadline and proc.poll() is None:
        if any(e.startswith(prefix) and e.endswith(".partial") for e in os.listdir(parent)):
            return True
        time.sleep(0.0005)
    return False


def kill_cli_at_save(argv: list[str], target: Path, allowed: dict, delay: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", *argv], cwd=target.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        mid_save = wait_for_staging(proc, target.parent, target.name, limit=240)
        if mid_save:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert mid_save or proc.returncode == 0, err.decode()[-2000:]
    record(SECTION, "cli-killed-mid-save" if mid_save and proc.returncode == -signal.SIGKILL else "cli-finished")
    return check_after_kill(target, allowed)


def test_sigkill_during_cli_compress(tmp_path):
    """`slimformer compress encoder-small ... --out small` over an existing model dir, killed mid-save."""
    old = fingerprint(io.save_model(build_model("encoder", ENCODER), tmp_path / "small"))
    kill_cli_at_save(["compress", "encoder-small", "--recipe", "lowrank:rank=16", "--out", "small"],
                     tmp_path / "small", {"old": is_model(old), "new": recipe_is(["lowrank"])}, 0.0)


def test_sigkill_during_cli_train(tmp_path):
    """`slimformer train digits --epochs 1 --out digits` over an existing model dir, killed mid-save."""
    from slimformer.models import build_builtin

    old = fingerprint(io.save_model(build_builtin("vit-tiny"), tmp_path / "digits"))
    kill_cli_at_save(["train", "digits", "--epochs", "1", "--out", "digits"], tmp_path / "digits",
                     {"old": is_model(old), "new": lambda d: io.read_meta(d).get("task") == "digits"}, 0.0)


def recipe_is(steps: list[str]):
    return lambda d: [e["step"] for e in io.read_meta(d)["recipe"]] == steps
