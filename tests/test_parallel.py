"""Data, tensor and pipeline parallel on 2 gloo processes, launched with torchrun as users launch them.

Process start-up dominates, so one launch runs every exactness check (TP, PP, DDP, FSDP2) and the
uninterrupted training run that the fault/resume test compares with.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from slimformer import io
from slimformer.models import build_model
from slimformer.parallel.launch import LaunchConfig, launch

TOL = 1e-5


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "slimformer", "parallel", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def close(diff: float, scale: float = 1.0) -> bool:
    """Within 1e-5, relative to the output's magnitude when it exceeds 1 (decoder logits reach ~30)."""
    return diff <= TOL * max(1.0, scale)


TRAIN = {"job": "ddp", "model": "vit-tiny", "task": "digits", "batch": 8, "steps": 6, "checkpoint_every": 3,
         "augment": True, "fsdp": True}


def small_models(root):
    """Text models of each family at toy width (the plans do not depend on size; start-up time does)."""
    text = {"vocab_size": 64, "max_len": 16, "d_model": 32, "n_heads": 4, "d_ff": 64}
    configs = {"encoder": {**text, "n_layers": 2}, "decoder": {**text, "n_layers": 2},
               "seq2seq": {**text, "n_enc_layers": 2, "n_dec_layers": 2}}
    return {arch: str(io.save_model(build_model(arch, cfg), root / arch)) for arch, cfg in configs.items()}


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    m = small_models(root)
    jobs = [
        {"job": "tp", "models": ["vit-tiny", m["encoder"], m["decoder"], m["seq2seq"]], "batch": 2,
         "seq_len": 8, "repeats": 1, "warmup": 0},
        {"job": "pp", "models": ["vit-tiny", m["encoder"], m["decoder"]], "schedules": ["gpipe", "1f1b"],
         "microbatch_list": [2], "batch": 4, "seq_len": 8, "repeats": 1, "warmup": 0, "train_repeats": 1},
        {"job": "ddp", "model": m["seq2seq"], "task": "reverse", "batch": 4, "seq_len": 6, "check": True,
         "check_modes": ["ddp", "fsdp"], "steps": 0},
        {**TRAIN, "check": True, "check_modes": ["ddp", "fsdp"], "out": str(root / "uninterrupted")},
    ]
    start = time.time()
    result = launch("multi", {"jobs": jobs}, LaunchConfig(nproc=2, quiet=True))
    print(f"multi launch: {time.time() - start:.1f} s")
    return {"models": m, **dict(enumerate(result["results"]))}


def test_tensor_parallel_matches_single_process(multi):
    rows = multi[0]["results"]
    assert len(rows) == 4
    for r in rows:
        assert close(r["max_abs_diff_output"], r["max_abs_output"]), r
        assert r["max_abs_diff_weights_after_step"] <= TOL, r


def test_pipeline_parallel_matches_single_process(multi):
    rows = multi[1]["results"]
    assert len({(r["model"], r["schedule"]) for r in rows}) == 6
    for r in rows:
        assert close(r["max_abs_diff_output"], r["max_abs_output"]), r
        assert r["max_abs_diff_weights_after_step"] <= TOL, r
        assert r["train_bubble_theory"] == pytest.approx(1 / 3)
        assert 0 <= r["train_bubble_measured"] < 1


def test_ddp_and_fsdp_step_equal_single_process_step(multi):
    for job in (multi[2], multi[3]):
        assert job["global_batch"] == 2 * job["batch_per_rank"]
        for mode in ("ddp", "fsdp"):
            assert job["check"][mode]["max_abs_diff_weights_after_step"] <= TOL, (job["task"], mode, job["check"])


def test_fault_names_rank_keeps_checkpoint_and_resume_continues_exactly(multi, tmp_path):
    """Rank 1 SIGKILLs itself at step 4, after the step-3 checkpoint: the job must end non-zero within 30 s
    naming rank 1, leave the checkpoint loadable, leave no process behind; resuming from it must finish
    with the same loss as the uninterrupted run."""
    out, mark = tmp_path / "ck", tmp_path / "fault-time"
    args = ["ddp", "--nproc", "2", "vit-tiny", "--task", "digits", "--batch", "8", "--steps", "6",
            "--checkpoint-every", "3", "--fsdp", "--out", str(out)]
    run = cli(*args, env={"SLIMFORMER_FAULT": "die:1:4", "SLIMFORMER_FAULT_MARK": str(mark)})
    ended = time.time()
    assert run.returncode != 0
    assert "rank 1" in run.stderr and "SIGKILL" in run.stderr, run.stderr
    assert ended - float(mark.read_text()) <= 30
    assert json.loads((out / "trainer.json").read_text())["step"] == 3
    io.load_model_dir(out)  # checksum verified: the checkpoint is intact
    leftovers = subprocess.run(["pgrep", "-f", "slimformer.parallel.worker"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "worker processes outlived the job"

    resumed = cli(*args[:-2], "--resume", str(out), "--out", str(out), "--json", str(tmp_path / "r.json"))
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads((tmp_path / "r.json").read_text())["results"][0]["ddp"]
    assert r["start_step"] == 3 and r["end_step"] == 6
    assert r["final_loss"] == pytest.approx(multi[3]["final_loss"], abs=1e-5)


def test_hung_rank_is_named_and_job_ends(tmp_path):
    mark = tmp_path / "fault-time"
    run = cli("tp", "--nproc", "2", "vit-tiny", "--batch", "2", "--repeats", "200", "--hang-timeout", "5",
              env={"SLIMFORMER_FAULT": "hang:1:1", "SLIMFORMER_FAULT_MARK": str(mark)})
    assert run.returncode != 0
    assert "rank 1 hung" in run.stderr, run.stderr
    assert time.time() - float(mark.read_text()) <= 30


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_both_exit_zero():
    """torchrun multi-node as users run it: two launchers (one rank each) meet at a c10d rendezvous on
    127.0.0.1. The rendezvous, not --node-rank, decides which node runs global rank 0: that node prints
    the result, the other exits 0 saying where the result is."""
    port = free_port()
    cmd = [sys.executable, "-m", "slimformer", "parallel", "ddp", "--nproc", "1", "vit-tiny", "--task", "digits",
           "--batch", "4", "--steps", "2", "--nnodes", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"loopback-{port}"]
    nodes = [subprocess.Popen([*cmd, "--node-rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    try:
        outs = [n.communicate(timeout=150) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    for n, (out, err) in zip(nodes, outs, strict=True):
        assert n.returncode == 0, (out, err)
    stdout = [" ".join(out.split()) for out, _ in outs]  # the console wraps long lines
    assert sum("ddp x2: steps 0..2" in out for out in stdout) == 1, stdout
    assert sum("the result is reported (and written) on the node that ran global rank 0" in out
               for out in stdout) == 1, stdout
