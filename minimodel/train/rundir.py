"""The run directory's one owner, `RunDir`: what a stage records in it and checks against it, and
what keeps it safe to write.

- Provenance: the git commit, a retypeable command line, the device; a resumed run keeps its config.
- One writer: run.lock, held for the run's lifetime (rank 0 under torchrun). The lock is an flock,
  which the kernel drops when the process ends however it ends; the file holds the holder's pid and
  host so a refused run can name it. A file left by a process that died without removing it
  (SIGKILL, a crashed node) is taken over with a warning when that process is gone from this host; a
  lock from another host is refused, since its liveness cannot be checked from here. Where the
  filesystem has no flock, the pid check alone decides.
- Room on its disk: what a run needs before it starts (the preflight), and one clear error line
  when the disk fills later instead of a library's traceback. Writers report a full disk in their
  own ways: Python's file writes as OSError(ENOSPC), safetensors as SafetensorError("... No space
  left on device (os error 28)"), torch.save as a RuntimeError that only says "unexpected pos"; for
  that one the free space left decides.
"""
from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError

from minimodel.common.errors import UserError
from minimodel.common.io import read_toml

LOCK = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    import fcntl  # POSIX only

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return None
        raise


class RunLock:
    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Take the run directory's lock (the directory must exist); UserError naming the holder if taken.
        An OSError means the directory cannot be written (the caller's preflight reports it)."""
        path = run_dir / LOCK
        host = socket.gethostname()
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = _flock(fd)
            holder = _read_holder(path)
            if locked is False or (locked is None and holder.get("host") == host
                                   and holder["pid"] != os.getpid() and _pid_alive(holder["pid"])):
                os.close(fd)
                raise UserError(_in_use(run_dir, holder))
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:  # released and removed meanwhile: try again
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            break
        if holder and holder.get("host") != host:
            os.close(fd)
            raise UserError(_in_use(run_dir, holder) + f" (if that job has ended, delete {path})")
        if holder and holder["pid"] != os.getpid():
            print(f"warning: taking over {path} from process {holder['pid']} on {host}, which ended without "
                  "releasing it (killed?)", file=sys.stderr, flush=True)
        me = {"pid": os.getpid(), "host": host, "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)  # before the flock goes: a waiter then sees a new file
        os.close(self.fd)
        self.fd = -1


def _in_use(run_dir: Path, holder: dict) -> str:
    who = (f"process {holder['pid']} on {holder.get('host', '?')} (since {holder.get('since', '?')})"
           if holder else "another process")
    return f"{run_dir} is in use by {who}: one run writes a run directory at a time; wait for it to end, " \
           "or use another train.out_dir"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


def run_bytes_needed(model: nn.Module, n_optim_states: int) -> int:
    """Room for two checkpoints (fp32 weights and optimizer states) and the logs."""
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    return 2 * weight_bytes * (1 + n_optim_states) + (64 << 20)


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def out_of_space(e: BaseException, directory: Path, need: int, judge_by_free: bool) -> bool:
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in NO_SPACE
    if any(text in str(e) for text in NO_SPACE_TEXT):
        return True
    if not judge_by_free:
        return False
    try:
        return shutil.disk_usage(directory).free < need
    except OSError:
        return False


@contextmanager
def stop_when_full(directory: Path, need: int, what: str, judge_by_free: bool = False):
    """Turn a full disk while writing `what` under `directory` into one UserError naming the directory,
    the room a run needs there and the fix. The writes inside are atomic (their temp files are gone by
    the time this runs), so the earlier checkpoints are intact and the same command resumes.
    judge_by_free: an error from a writer that does not say why (torch.save) counts as a full disk
    when less than `need` is free."""

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        if not out_of_space(e, directory, need, judge_by_free):
            raise
        try:
            free = f"{size(shutil.disk_usage(directory).free)} is free"
        except OSError:
            free = "free space unknown"
        raise UserError(f"no space left on device in {directory} while writing {what}: the run needs about "
                        f"{size(need)} free there ({free}); free space on that disk, then re-run the same "
                        "command to resume from the last checkpoint (earlier checkpoints are intact)") from None


# Keys that may change between a run and its resumption without changing the result's meaning.
# The fault-handling keys are here so a run stopped on a NaN can resume with on_nonfinite=skip.
RESUMABLE_CHANGES = {("train", k) for k in (
    "steps", "stop_at_step", "log_every", "eval_every", "ckpt_every", "keep_last", "progress", "compile",
    "attn_logit_every", "device", "on_nonfinite", "max_consecutive_skips", "spike_sigma",
)} | {("tracking", "wandb"), ("tracking", "run_name")}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def command_line() -> str:
    """How this stage was launched, as a user would retype it (no machine paths)."""
    prefix = "torchrun -m" if "LOCAL_RANK" in os.environ else "python -m"
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parent.parent
    try:  # the entry module (pretrain, or a driver such as the ablation) as a dotted name
        entry = ".".join(script.relative_to(root).with_suffix("").parts)
    except ValueError:
        entry, prefix = script.name, "python"
    return " ".join([prefix, entry, *sys.argv[1:]])


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"

    return f"cpu: {os.cpu_count()} cores, {platform.machine()}"


def check_same_run(run_dir: Path, resolved: dict) -> None:
    """A run directory holds one experiment: refuse to resume it under another config."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return
    old = read_toml(path, "use another train.out_dir or delete the old run")
    old.pop("run", None)
    diffs = [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}"
             for s, values in resolved.items() for k, v in values.items()
             if (s, k) not in RESUMABLE_CHANGES and old.get(s, {}).get(k) != v]
    if diffs:
        raise UserError(f"{run_dir} holds a run with another config ({'; '.join(diffs[:3])}); "
                        "use another train.out_dir or delete the old run")


class RunDir:
    """A stage's run directory: its path, the bytes two checkpoints of what it trains need, and (on
    rank 0, from `open` to `release`) its lock."""

    def __init__(self, path: str | Path, trained: nn.Module, n_optim_states: int = 2):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.need = run_bytes_needed(trained, n_optim_states)
        self.lock: RunLock | None = None

    def open(self) -> None:
        """The preflight (rank 0, before any compute): the directory is writable, no other run writes it
        (its lock is held until `release`), and it has room for two checkpoints. A directory made here
        and found unusable is removed again: a failed start leaves nothing."""
        out_dir, created = self.path, not self.path.exists()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock.acquire(out_dir)  # its write is the writability probe
        except OSError as e:
            raise UserError(f"run directory {out_dir} is not writable ({e.strerror}); "
                            "choose another train.out_dir") from None
        free = shutil.disk_usage(out_dir).free
        if free < self.need:
            self.release()
            if created:
                out_dir.rmdir()
            raise UserError(f"{out_dir} has {free / 2**30:.2f} GiB free; two checkpoints need about "
                            f"{self.need / 2**30:.2f} GiB: free space or choose another train.out_dir")

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def guard(self, what: str, judge_by_free: bool = False):
        """A full disk while writing `what` here becomes one error line (see stop_when_full)."""
        return stop_when_full(self.path, self.need, what, judge_by_free)

    def guard_checkpoint(self, step: int):
        return stop_when_full(self.checkpoints, self.need, f"checkpoint step_{step}", judge_by_free=True)
