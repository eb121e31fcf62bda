"""A training process killed with SIGKILL resumes to the same final weights as an uninterrupted run:
a single-process pretrain, one rank of a 2-process torchrun job, and the CPT stage (LoRA + trained
embeddings + replay). The kill step is random (seeded from the pid) and named in every assert."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimodel.tracking import read_metrics
from conftest import ROOT, tiny_overrides
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401

TIMEOUT = 300  # generous per-process deadline; a healthy run takes seconds


def start(args: list[str], stderr_path: Path, **env) -> subprocess.Popen:
    """A child in its own session (so a failing test can end it and all its children); stderr goes
    to a file, since a pipe nobody reads while polling could fill and stall the child."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    with open(stderr_path, "w") as err:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                                stderr=err, text=True, start_new_session=True)


@pytest.fixture
def procs():
    """Popen objects a test started; any still running at teardown (a failed test) is ended: SIGTERM
    first, which torchrun passes on to its workers (each in a session of its own), then SIGKILL."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=60)


def finish(p: subprocess.Popen, stderr_path: Path) -> str:
    p.wait(timeout=TIMEOUT)
    return stderr_path.read_text()


def last_logged_step(run_dir: Path) -> int:
    """Newest step in metrics.jsonl; a line still being written is ignored."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    steps = []
    for line in path.read_text().split("\n")[:-1]:  # the part after the last newline may be partial
        if line.strip():
            steps.append(json.loads(line)["step"])
    return max(steps, default=-1)


def wait_until(condition, what: str, p: subprocess.Popen | None = None, timeout: float = TIMEOUT) -> None:
    """Poll `condition` (with a deadline) while `p`, if given, keeps running."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert p is None or p.poll() is None, f"the process ended (rc {p.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True while pid runs; a zombie (exited, not yet reaped by whoever adopted it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def same_tensors(a_path: Path, b_path: Path) -> bool:
    a, b = load_file(a_path), load_file(b_path)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def partial_checkpoints(run_dir: Path) -> list[str]:
    return [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(english_set, tmp_path, procs):
    extra = {"train.steps": 50, "train.ckpt_every": 5, "train.log_every": 1, "train.eval_every": 25,
             "train.keep_last": 2}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log = tmp_path / "stderr.txt"
    procs.append(p := start(["-m", "minimodel.pretrain", *tiny_overrides(english_set, straight, **extra)], log))
    assert p.wait(timeout=TIMEOUT) == 0, log.read_text()

    kill_at = random.Random(os.getpid()).randint(6, 30)  # past the first checkpoint, well before the end
    why = f"killed at step {kill_at}"
    print(why)
    procs.append(p := start(["-m", "minimodel.pretrain", *tiny_overrides(english_set, killed, **extra)], log))
    wait_until(lambda: last_logged_step(killed) >= kill_at, f"step {kill_at}", p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not (killed / "final").exists(), why

    procs.append(p := start(["-m", "minimodel.pretrain", *tiny_overrides(english_set, killed, **extra)], log))
    err = finish(p, log)
    assert p.returncode == 0, f"{why}\n{err}"
    assert "resumed from" in err, why
    assert same_tensors(straight / "final" / "model.safetensors", killed / "final" / "model.safetensors"), why
    assert not partial_checkpoints(killed), why  # a checkpoint cut short by the kill leaves no temp directory
    # the log holds each step once (the redone steps' rows replaced, a torn last line dropped), same values
    assert curve(killed) == curve(straight), why


def curve(run_dir):
    return [(m["step"], m.get("loss"), m.get("val_loss")) for m in read_metrics(run_dir)
            if "loss" in m or "val_loss" in m]


def test_sigkill_of_one_torchrun_rank_then_resume_is_bitwise_exact(english_set, tmp_path, procs):
    """Kill rank 1 of a 2-process gloo job: torchrun fails and ends rank 0; the same command resumes."""
    extra = {"train.steps": 48, "train.micro_batch": 4, "train.grad_accum": 2, "train.ckpt_every": 4,
             "train.log_every": 1, "train.eval_every": 24, "train.keep_last": 2}

    def torchrun(out: Path, log: Path, **env) -> subprocess.Popen:
        out.mkdir(exist_ok=True)
        p = start(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/dist_worker.py",
                   str(out), *tiny_overrides(english_set, out / "run", **extra)], log, OMP_NUM_THREADS="1", **env)
        procs.append(p)
        return p

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    err = finish(p := torchrun(straight, tmp_path / "straight.txt"), tmp_path / "straight.txt")
    assert p.returncode == 0, err[-3000:]

    kill_at = random.Random(os.getpid()).randint(5, 30)  # past the first checkpoint (step 4), well before the end
    why = f"rank 1 killed at step {kill_at}"
    print(why)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    log = tmp_path / "killed.txt"
    p = torchrun(killed, log, MINIMODEL_TEST_PID_DIR=str(pid_dir))
    wait_until(lambda: last_logged_step(killed / "run") >= kill_at, f"step {kill_at}", p)
    pids = {r: int((pid_dir / f"rank{r}.pid").read_text()) for r in (0, 1)}
    assert alive(pids[1]), why
    os.kill(pids[1], signal.SIGKILL)
    err = finish(p, log)
    assert p.returncode != 0, f"{why}: torchrun exited 0\n{err[-3000:]}"
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), "both workers to be gone", timeout=60)
    assert not (killed / "run" / "final").exists(), why

    log = tmp_path / "resumed.txt"
    p = torchrun(killed, log)
    err = finish(p, log)
    assert p.returncode == 0, f"{why}\n{err[-3000:]}"
    assert "resumed from" in err, why
    assert same_tensors(killed / "rank0.safetensors", killed / "rank1.safetensors"), why
    assert same_tensors(straight / "rank0.safetensors", killed / "rank0.safetensors"), why
    assert same_tensors(straight / "run" / "final" / "model.safetensors",
                        killed / "run" / "final" / "model.safetensors"), why
    assert not partial_checkpoints(killed / "run"), why


def test_sigkill_of_cpt_with_replay_then_resume_is_bitwise_exact(bilingual, tmp_path, procs):
    """LoRA + trained embeddings + a 25 % replay stream: the adapter, the embeddings and the merged
    model all end bitwise equal, so the replay position resumed where it stopped."""
    extra = {"replay.path": str(bilingual["en"]), "replay.ratio": 0.25, "train.steps": 60, "train.ckpt_every": 4,
             "train.log_every": 1, "train.eval_every": 30, "train.keep_last": 2}

    def cpt(out: Path, log: Path) -> subprocess.Popen:
        p = start(["-m", "minimodel.cpt", *stage_overrides(bilingual["core"], bilingual["ko"], out, **extra)], log)
        procs.append(p)
        return p

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log = tmp_path / "stderr.txt"
    p = cpt(straight, log)
    assert p.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]

    kill_at = random.Random(os.getpid()).randint(5, 40)  # past the first checkpoint (step 4), well before the end
    why = f"killed at step {kill_at}"
    print(why)
    p = cpt(killed, log)
    wait_until(lambda: last_logged_step(killed) >= kill_at, f"step {kill_at}", p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not (killed / "final").exists() and not (killed / "adapter").exists(), why

    p = cpt(killed, log)
    err = finish(p, log)
    assert p.returncode == 0, f"{why}\n{err[-3000:]}"
    assert "resumed from" in err, why
    for name in ("adapter/adapter_model.safetensors", "adapter/embeddings.safetensors", "final/model.safetensors"):
        assert same_tensors(straight / name, killed / name), f"{why}: {name} differs"
    assert not partial_checkpoints(killed), why


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
