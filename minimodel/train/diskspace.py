"""Room on the run's disk: what a run needs before it starts, and one clear error line when the
disk fills later (other jobs, metrics, an export) instead of a library's traceback.

The writers report a full disk in their own ways: Python's file writes as OSError(ENOSPC),
safetensors as SafetensorError("... No space left on device (os error 28)"), torch.save as a
RuntimeError that only says "unexpected pos"; for that one the free space left decides.
"""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch.nn as nn

from minimodel.common.errors import UserError

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
    from safetensors import SafetensorError

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
