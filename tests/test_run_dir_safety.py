"""The run directory is never silently lost: a lock keeps a second run out (a stale one is taken over,
one from another host is refused), a run whose checkpoints all fail to load refuses to start over,
and the signal handler ignores a second signal and dies on a third. The two-process cases (a live
holder, SIGTERM mid-run) are in test_kill_resume.py."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_overrides

from minimodel.common.errors import UserError
from minimodel.config import load_config
from minimodel.pretrain import run
from minimodel.train.tracking import read_metrics

SHORT = {"train.steps": 6, "train.ckpt_every": 3, "train.eval_every": 6, "train.log_every": 1}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(english_set, tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))
    assert run(load_config(None, tiny_overrides(english_set, out, **SHORT)))["step"] == 6
    err = capfd.readouterr().err
    assert f"warning: taking over {out / 'run.lock'} from process {pid}" in err, err
    assert (out / "final" / "model.safetensors").is_file() and not (out / "run.lock").exists()


def test_a_lock_held_on_another_host_is_refused_before_any_write(english_set, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"pid": 4242, "host": "node-b", "since": "2026-01-01 00:00:00 UTC"}))
    with pytest.raises(UserError, match=r"in use by process 4242 on node-b \(since 2026-01-01 00:00:00 UTC\).*"
                                        r"if that job has ended, delete .*run\.lock") as e:
        run(load_config(None, tiny_overrides(english_set, out, **SHORT)))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # no config.toml, no metrics, lock untouched
    assert json.loads((out / "run.lock").read_text())["host"] == "node-b"


def test_checkpoints_none_of_which_loads_are_not_silently_replaced(english_set, tmp_path):
    """#18: a run whose kept checkpoints are all damaged refuses to start over from step 0 (which would
    erase its metrics history) and says how to start fresh on purpose; doing that then works."""
    out = tmp_path / "run"
    overrides = tiny_overrides(english_set, out, **{**SHORT, "train.steps": 12, "train.stop_at_step": 9})
    assert run(load_config(None, overrides))["step"] == 9
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step_6", "step_9"]
    for name in kept:
        f = out / "checkpoints" / name / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])  # truncated
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match=r"holds checkpoints \(step_6, step_9\) of which none loads .*to start "
                                        r"again from step 0 on purpose, delete .*checkpoints") as e:
        run(load_config(None, overrides))
    assert "\n" not in str(e.value)
    assert (out / "metrics.jsonl").read_bytes() == metrics  # the history is kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == kept and not (out / "run.lock").exists()

    import shutil

    shutil.rmtree(out / "checkpoints")  # the fix the message names
    assert run(load_config(None, overrides))["step"] == 9
    assert max(m["step"] for m in read_metrics(out)) == 9


def test_a_second_signal_is_ignored_and_a_third_kills():
    """The handler alone, in a child process: SIGINT once sets the stop, twice is ignored, thrice kills."""
    code = ("import os, signal, time\n"
            "from minimodel.train.stopping import StopSignals\n"
            "with StopSignals() as s:\n"
            "    for n in (1, 2, 3):\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(0.2)\n"
            "        print(n, s.received.name, s.flags(), flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines() == ["1 SIGINT [0.0, 1.0]", "2 SIGINT [0.0, 1.0]"], p.stdout + p.stderr
    assert p.returncode == -signal.SIGINT, p.stderr
    assert "SIGINT again: still saving the checkpoint; a third signal ends the process without it" in p.stderr


def test_ctrl_c_finishes_the_step_under_way_and_resumes_bitwise(english_set, tmp_path, monkeypatch, capfd):
    """SIGINT arrives at the start of step 5 (in this process, where the handler runs): step 5 is finished
    and saved, the run exits 130, and the same config resumes there to the uninterrupted run's weights."""
    import torch
    from safetensors.torch import load_file

    import minimodel.train.trainer

    steps = {**SHORT, "train.steps": 8, "train.ckpt_every": 3}
    run(load_config(None, tiny_overrides(english_set, tmp_path / "straight", **steps)))
    before = signal.getsignal(signal.SIGINT)  # Python's default; SIG_IGN where pytest was started with `&`
    real, calls = minimodel.train.trainer.set_lr, []

    def set_lr(*args):  # called once at the start of each step
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args)
    monkeypatch.setattr(minimodel.train.trainer, "set_lr", set_lr)
    out = tmp_path / "stopped"
    cfg = load_config(None, tiny_overrides(english_set, out, **steps))
    with pytest.raises(SystemExit) as e:
        run(cfg)
    assert e.value.code == 130
    assert "stopped by SIGINT at step 5; re-run the same command to resume" in capfd.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3", "step_5"]
    assert not (out / "run.lock").exists() and signal.getsignal(signal.SIGINT) is before  # restored
    monkeypatch.undo()
    assert run(cfg)["step"] == 8
    assert "resumed from" in capfd.readouterr().err
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(m["step"], m.get("loss")) for m in read_metrics(out)] == \
           [(m["step"], m.get("loss")) for m in read_metrics(tmp_path / "straight")]
