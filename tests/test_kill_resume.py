"""A training process killed with SIGKILL, or stopped by SIGTERM (pre-emption), resumes to the same
final weights as an uninterrupted run: a single-process pretrain, one rank of a 2-process torchrun
job, and the CPT stage (LoRA + trained embeddings + replay). A SIGTERM saves a checkpoint at the
step it finishes, so no step is redone. A second run started on a run directory in use stops
before writing anything. The kill/signal step is random (seeded from the pid) and named in every
assert. The uninterrupted runs are made once per configuration and shared."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_overrides
from safetensors.torch import load_file
from test_cpt_fixtures import bilingual, stage_overrides  # noqa: F401

from minimodel.train.tracking import read_metrics

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


def run_to_end(args: list[str], log: Path) -> None:
    p = start(args, log, OMP_NUM_THREADS="1") if "torch.distributed.run" in args else start(args, log)
    try:
        assert p.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


PRETRAIN = {"train.steps": 50, "train.ckpt_every": 5, "train.log_every": 1, "train.eval_every": 25,
            "train.keep_last": 2}
TORCHRUN = {"train.steps": 48, "train.micro_batch": 4, "train.grad_accum": 2, "train.ckpt_every": 4,
            "train.log_every": 1, "train.eval_every": 24, "train.keep_last": 2}


def torchrun_args(english_set, out: Path) -> list[str]:
    """tests/dist_worker.py under a 2-process gloo job; each rank writes OUT/rank<N>.safetensors."""
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/dist_worker.py",
            str(out), *tiny_overrides(english_set, out / "run", **TORCHRUN)]


def cpt_extra(bilingual) -> dict:
    return {"replay.path": str(bilingual["en"]), "replay.ratio": 0.25, "train.steps": 60, "train.ckpt_every": 4,
            "train.log_every": 1, "train.eval_every": 30, "train.keep_last": 2}


@pytest.fixture(scope="module")
def pretrain_straight(english_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "straight"
    run_to_end(["-m", "minimodel.pretrain", *tiny_overrides(english_set, out, **PRETRAIN)], out.parent / "log")
    return out


@pytest.fixture(scope="module")
def torchrun_straight(english_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "straight"
    out.mkdir()
    run_to_end(torchrun_args(english_set, out), out.parent / "log")
    return out


@pytest.fixture(scope="module")
def cpt_straight(bilingual, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpt") / "straight"
    run_to_end(["-m", "minimodel.cpt", *stage_overrides(bilingual["core"], bilingual["ko"], out,
                                                          **cpt_extra(bilingual))], out.parent / "log")
    return out


def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(english_set, pretrain_straight, tmp_path, procs):
    extra = PRETRAIN
    straight, killed = pretrain_straight, tmp_path / "killed"
    log = tmp_path / "stderr.txt"

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


def test_sigkill_of_one_torchrun_rank_then_resume_is_bitwise_exact(english_set, torchrun_straight, tmp_path,
                                                                   procs):
    """Kill rank 1 of a 2-process gloo job: torchrun fails and ends rank 0; the same command resumes."""
    def torchrun(out: Path, log: Path, **env) -> subprocess.Popen:
        out.mkdir(exist_ok=True)
        p = start(torchrun_args(english_set, out), log, OMP_NUM_THREADS="1", **env)
        procs.append(p)
        return p

    straight, killed = torchrun_straight, tmp_path / "killed"

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


def test_sigkill_of_cpt_with_replay_then_resume_is_bitwise_exact(bilingual, cpt_straight, tmp_path, procs):
    """LoRA + trained embeddings + a 25 % replay stream: the adapter, the embeddings and the merged
    model all end bitwise equal, so the replay position resumed where it stopped."""
    def cpt(out: Path, log: Path) -> subprocess.Popen:
        p = start(["-m", "minimodel.cpt", *stage_overrides(bilingual["core"], bilingual["ko"], out,
                                                            **cpt_extra(bilingual))], log)
        procs.append(p)
        return p

    straight, killed = cpt_straight, tmp_path / "killed"
    log = tmp_path / "stderr.txt"

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
    from minimodel.config import load_config
    from minimodel.pretrain import run
    from minimodel.train.checkpoint import latest_checkpoint

    out = tmp_path / "run"
    run(load_config(None, tiny_overrides(english_set, out, **{"train.steps": 20, "train.stop_at_step": 10})))
    partial = out / "checkpoints" / ".step_15.abc123.tmp"  # what a kill during save_checkpoint leaves
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    path, meta = latest_checkpoint(out / "checkpoints")
    assert path.name == "step_10" and meta["step"] == 10 and not partial.exists()


# ---------------------------------------------------------------- SIGTERM / SIGINT: stop cleanly, redo nothing

def stopped_at(err: str, sig: str) -> int:
    """The step named by the stop line; exactly one such line."""
    lines = re.findall(rf"^stopped by {sig} at step (\d+); re-run the same command to resume$", err, re.M)
    assert len(lines) == 1, err[-3000:]
    return int(lines[0])


def signal_at_a_random_step(p: subprocess.Popen, run_dir: Path, pid: int, lo: int, hi: int,
                            sig=signal.SIGTERM) -> tuple[int, str]:
    """Wait until a random step in [lo, hi] is logged, then send `sig` twice (the second must be ignored).
    Returns the last step logged before the signal: the stop may come later, never earlier."""
    at = random.Random(os.getpid()).randint(lo, hi)
    wait_until(lambda: last_logged_step(run_dir) >= at, f"step {at}", p)
    done = last_logged_step(run_dir)
    os.kill(pid, sig)
    time.sleep(0.05)
    os.kill(pid, sig)
    why = f"{sig.name} sent after step {done}"
    print(why)
    return done, why


def check_stop(run_dir: Path, err: str, rc: int, sig: signal.Signals, done: int, why: str) -> int:
    assert rc == 128 + sig, f"{why}: exit status {rc}\n{err[-3000:]}"
    step = stopped_at(err, sig.name)
    assert step >= done, f"{why}: stopped at step {step}, before the steps already done"
    # the second signal was ignored (the exit status says so): it lands during the save (and says so) or,
    # on a fast machine, after it, while the process exits; test_run_dir_safety checks the message itself
    from minimodel.train.checkpoint import verify_checkpoint

    assert verify_checkpoint(run_dir / "checkpoints" / f"step_{step}")["step"] == step, why
    assert not (run_dir / "final").exists() and not partial_checkpoints(run_dir), why
    assert not (run_dir / "run.lock").exists(), why  # released on the way out
    return step


def check_resumed_without_redoing(err: str, stop_step: int, why: str) -> None:
    resumed = re.findall(r"resumed from \S+step_(\d+) \(step (\d+)\)", err)
    assert resumed and int(resumed[0][1]) == stop_step, f"{why}: stopped at {stop_step}, resumed {resumed}"


def test_sigterm_at_a_random_step_stops_there_and_resumes_bitwise(english_set, pretrain_straight, tmp_path, procs):
    run_dir, log = tmp_path / "stopped", tmp_path / "stderr.txt"
    args = ["-m", "minimodel.pretrain", *tiny_overrides(english_set, run_dir, **PRETRAIN)]
    procs.append(p := start(args, log))
    done, why = signal_at_a_random_step(p, run_dir, p.pid, 6, 40)
    err = finish(p, log)
    step = check_stop(run_dir, err, p.returncode, signal.SIGTERM, done, why)
    assert "Traceback" not in err, why

    procs.append(p := start(args, log))
    err = finish(p, log)
    assert p.returncode == 0, f"{why}\n{err[-3000:]}"
    check_resumed_without_redoing(err, step, why)
    assert same_tensors(pretrain_straight / "final" / "model.safetensors", run_dir / "final" / "model.safetensors"), why
    assert curve(run_dir) == curve(pretrain_straight), why


def test_sigterm_to_torchrun_rank_0_stops_both_ranks_at_one_step(english_set, torchrun_straight, tmp_path, procs):
    """Rank 0 alone gets the signal; the step's all-reduce carries it, so both ranks stop after the same
    step and the checkpoint there is complete; the same command resumes to the same weights."""
    out, log, pid_dir = tmp_path / "stopped", tmp_path / "stderr.txt", tmp_path / "pids"
    out.mkdir()
    pid_dir.mkdir()
    procs.append(p := start(torchrun_args(english_set, out), log, OMP_NUM_THREADS="1",
                            MINIMODEL_TEST_PID_DIR=str(pid_dir)))
    wait_until(lambda: last_logged_step(out / "run") >= 1, "step 1", p)
    pids = {r: int((pid_dir / f"rank{r}.pid").read_text()) for r in (0, 1)}
    done, why = signal_at_a_random_step(p, out / "run", pids[0], 5, 36)
    err = finish(p, log)
    step = check_stop(out / "run", err, 128 + signal.SIGTERM, signal.SIGTERM, done, why)
    assert p.returncode != 0 and re.search(r"exitcode  : 143 \(pid: \d+\)", err), err[-3000:]  # torchrun reports it
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), "both workers to be gone", timeout=60)

    procs.append(p := start(torchrun_args(english_set, out), log, OMP_NUM_THREADS="1"))
    err = finish(p, log)
    assert p.returncode == 0, f"{why}\n{err[-3000:]}"
    check_resumed_without_redoing(err, step, why)
    assert same_tensors(out / "rank0.safetensors", out / "rank1.safetensors"), why
    assert same_tensors(torchrun_straight / "run" / "final" / "model.safetensors",
                        out / "run" / "final" / "model.safetensors"), why


def test_sigterm_of_cpt_with_replay_stops_there_and_resumes_bitwise(bilingual, cpt_straight, tmp_path, procs):
    run_dir, log = tmp_path / "stopped", tmp_path / "stderr.txt"
    args = ["-m", "minimodel.cpt", *stage_overrides(bilingual["core"], bilingual["ko"], run_dir,
                                                     **cpt_extra(bilingual))]
    procs.append(p := start(args, log))
    done, why = signal_at_a_random_step(p, run_dir, p.pid, 5, 45)
    err = finish(p, log)
    step = check_stop(run_dir, err, p.returncode, signal.SIGTERM, done, why)
    assert not (run_dir / "adapter").exists(), why

    procs.append(p := start(args, log))
    err = finish(p, log)
    assert p.returncode == 0, f"{why}\n{err[-3000:]}"
    check_resumed_without_redoing(err, step, why)
    for name in ("adapter/adapter_model.safetensors", "adapter/embeddings.safetensors", "final/model.safetensors"):
        assert same_tensors(cpt_straight / name, run_dir / name), f"{why}: {name} differs"
    assert curve(run_dir) == curve(cpt_straight), why


# ---------------------------------------------------------------- one writer per run directory

def test_a_second_run_on_a_run_directory_in_use_stops_before_writing(english_set, pretrain_straight, tmp_path,
                                                                      procs):
    """The first run is paused (SIGSTOP) while the second starts, so the second surely meets it running;
    the second exits 2 with one line naming the holder, and the first ends as if alone."""
    run_dir = tmp_path / "run"
    args = ["-m", "minimodel.pretrain", *tiny_overrides(english_set, run_dir, **PRETRAIN)]
    procs.append(first := start(args, tmp_path / "first.txt"))
    wait_until(lambda: last_logged_step(run_dir) >= 3, "step 3", first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        procs.append(second := start(args, tmp_path / "second.txt"))
        err = finish(second, tmp_path / "second.txt")
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing written
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert f"in use by process {first.pid} on {socket.gethostname()}" in lines[0], lines[0]

    err = finish(first, tmp_path / "first.txt")
    assert first.returncode == 0, err[-3000:]
    assert same_tensors(pretrain_straight / "final" / "model.safetensors", run_dir / "final" / "model.safetensors")
    assert curve(run_dir) == curve(pretrain_straight)
    assert not (run_dir / "run.lock").exists()
