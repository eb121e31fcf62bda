"""A training process killed with SIGKILL resumes to the same final weights as an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import ROOT, tiny_overrides


def start(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "minimodel.pretrain", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def last_logged_step(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=-1)


def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(english_set, tmp_path):
    extra = {"train.steps": 40, "train.ckpt_every": 5, "train.log_every": 1, "train.eval_every": 20,
             "train.keep_last": 2}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p = start(tiny_overrides(english_set, straight, **extra))
    assert p.wait(timeout=300) == 0, p.stderr.read()

    kill_at = random.Random(os.getpid()).randint(8, 33)
    p = start(tiny_overrides(english_set, killed, **extra))
    deadline = time.time() + 300
    while last_logged_step(killed) < kill_at and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not (killed / "final").exists()

    p = start(tiny_overrides(english_set, killed, **extra))
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 0, err
    assert "resumed from" in err
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"killed at step {kill_at}"
    leftovers = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # a checkpoint cut short by the kill leaves no temp directory


def test_a_checkpoint_cut_short_is_ignored_and_cleaned(english_set, tmp_path):
    from minimodel.checkpoint import latest_checkpoint
    from minimodel.config import load_config
    from minimodel.pretrain import run

    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(english_set, out, **{"train.steps": 20, "train.stop_at_step": 10})))
    partial = out / "checkpoints" / ".step_15.abc123.tmp"  # what a kill during save_checkpoint leaves
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    path, meta = latest_checkpoint(out / "checkpoints")
    assert path.name == "step_10" and meta["step"] == 10 and not partial.exists()
