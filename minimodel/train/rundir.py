"""What every stage records in, and checks against, its run directory: the git commit, a
retypeable command line, the device, and that a resumed run keeps its config."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from minimodel.common.errors import UserError
from minimodel.common.io import read_toml

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
    import platform

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
import shutil

import torch.nn as nn

from minimodel.train.diskspace import run_bytes_needed
from minimodel.train.runlock import RunLock


def preflight(out_dir: Path, model: nn.Module, n_optim_states: int) -> RunLock:
    """The run directory is writable, no other run writes it, and it holds two checkpoints, before
    any compute is spent. Returns the directory's lock (held until the run ends). A directory made
    here and found unusable is removed again: a failed start leaves nothing."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(out_dir)  # its write is the writability probe
    except OSError as e:
        raise UserError(f"run directory {out_dir} is not writable ({e.strerror}); choose another train.out_dir") from None
    need = run_bytes_needed(model, n_optim_states)
    free = shutil.disk_usage(out_dir).free
    if free < need:
        lock.release()
        if created:
            out_dir.rmdir()
        raise UserError(f"{out_dir} has {free / 2**30:.2f} GiB free; two checkpoints need about "
                        f"{need / 2**30:.2f} GiB: free space or choose another train.out_dir")
    return lock
