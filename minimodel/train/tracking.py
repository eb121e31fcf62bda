"""Metrics: metrics.jsonl always, wandb when asked, a progress bar; rank 0 only."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from minimodel.common.errors import UserError
from minimodel.common.io import write_text


class Tracker:
    def __init__(self, run_dir: Path, config: dict, enabled: bool, use_wandb: bool = False,
                 project: str = "minimodel", run_name: str = "", total_steps: int = 0,
                 start_step: int = 0, progress: bool = True):
        self.enabled = enabled  # False on non-zero ranks: every call is a no-op
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        if use_wandb and os.environ.get("WANDB_MODE", "").lower() != "disabled":
            import wandb  # WANDB_MODE=offline works without a network

            self.wandb = wandb.init(project=project, name=run_name or Path(run_dir).name,
                                    config=config, dir=str(run_dir), resume="allow")
        if progress and total_steps:

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def rewind(self, step: int) -> None:
        """Forget the rows logged after `step` (a resumed run redoes those steps) and a line torn by
        a kill mid-write, so metrics.jsonl holds each step once, in order."""
        if not self.enabled:
            return

        self.file.close()
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a", encoding="utf-8")

    def progress(self, step: int, **shown) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()},
                                 refresh=False)
            self.bar.refresh()

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and line.strip():  # only the last line may be mid-write
                raise UserError(f"{path} line {i + 1} is damaged (not JSON); delete that line or the run's "
                                "metrics.jsonl to read the rest") from None
    return rows
