"""One writer per run directory: run.lock, held for the run's lifetime (rank 0 under torchrun).

The lock is an flock on run.lock, which the kernel drops when the process ends however it ends,
and the file holds the holder's pid and host so a refused run can name it. A file left by a
process that died without removing it (SIGKILL, a crashed node) is taken over with a warning
when that process is gone from this host; a lock from another host is refused, since its
liveness cannot be checked from here. Where the filesystem has no flock, the pid check alone
decides.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from minimodel.common.errors import UserError

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
    import fcntl

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
