"""One prepared GPU check: everything a GPU session can tell, measured in at most 8 minutes.

    bash scripts/gpu_check.sh [--budget 450]                      on one H100/H200 (or any CUDA GPU)
    python -m scripts.gpu_check --device cpu --quick --out DIR    the CPU dry run (part of the tests)
    python -m scripts.gpu_check --render-only                     re-render docs/benchmarks.md

Sections, in order (scripts/gpu_sections.py, scripts/gpu_lora.py): env, the CUDA-path tests
(`pytest -m gpu`), the training step against transformers (104M, seq 1024/2048, eager/compiled), Muon's
share of the step, the largest
104M micro-batch on a 24 GB card, the 7B LoRA recipe's peak memory, 300 steps of the 104M core, the
sampling speed of generated replay at 104M. Each
record is one JSON line appended (and flushed) to OUT/<date>-<gpu>.jsonl the moment it is measured, so
a run cut off keeps what it has; a failing section records {"section", "error"} and the next one runs.
Each section gets a time budget: at most its own cap, and never so much that the later sections lose
the least they need. Then docs/benchmarks.md's GPU tables are rendered from every OUT/*.jsonl.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from minimodel.common.errors import UserError, cli_entry
from scripts import gpu_lora
from scripts import gpu_sections as S

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "gpu"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
# name: (function, the most seconds it may take, the fewest it needs to be worth starting)
SECTIONS: dict[str, tuple[Callable, float, float]] = {
    "gpu_tests": (S.gpu_tests, 80, 30),
    "bench_train": (S.bench_train, 170, 40),
    "muon_share": (S.muon_share, 60, 15),
    "microbatch_24gb": (S.microbatch_24gb, 50, 20),
    "lora_7b": (gpu_lora.lora_7b, 80, 40),
    "pretrain_300": (S.pretrain_300, 120, 75),
    "dream_replay": (S.dream_replay, 45, 20),
}
GPU_BUDGET_S = 450  # the sections' share of gpu_check.sh's 8 minutes (start-up and rendering take the rest)
QUICK_SLACK = 4
OPTIONAL = ("datasets", "wandb", "lm_eval", "gguf", "unsloth", "bitsandbytes", "google.protobuf", "peft",
            "transformers")


class SectionTimeout(BaseException):
    """Raised in the main thread when a section's budget runs out (BaseException: no library's
    `except Exception` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise SectionTimeout()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clean(value):
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


@dataclass
class Check:
    """What a section sees: where it runs, how small, how long it may take, where its records go."""
    device: torch.device
    quick: bool
    path: Path                          # the JSONL file records are appended to
    run: str                            # this run's id (its UTC start time)
    gpu: str
    data: str | None = None
    section: str = ""
    deadline: float = 0.0               # time.monotonic() at which the section's budget ends
    outcomes: dict = field(default_factory=dict)  # section -> the kinds of its records

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, **fields) -> None:
        record = clean({"section": self.section, "run": self.run, "gpu": self.gpu, **fields})
        line = json.dumps(record, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(line, flush=True)
        kind = "error" if "error" in fields else "skipped" if "skipped" in fields else "ok"
        self.outcomes.setdefault(self.section, set()).add(kind)

    def outcome(self, section: str) -> str:
        """error if any record failed, ok if any measured, else skipped (none: no record)."""
        kinds = self.outcomes.get(section, set())
        return next((k for k in ("error", "ok", "skipped") if k in kinds), "none")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def environment(device: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from minimodel.train.rundir import git_commit

    present = {}
    for name in OPTIONAL:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a dotted name whose parent package is absent
            found = False
        if not found:
            present[name] = None
            continue
        try:
            present[name] = version(name.replace("google.", ""))
        except PackageNotFoundError:
            present[name] = "present"
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "packages": present, "commit": git_commit(), "host_cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                   gpu_count=torch.cuda.device_count())
    return env


def free_between_sections(device: torch.device) -> None:
    if "torch._dynamo" in sys.modules:  # compiled graphs of one section are no use to the next
        torch._dynamo.reset()
    S.free_memory(device)


def run_sections(ck: Check, names: list[str], budget: float, slack: float = 1.0) -> float:
    """Run the named sections within `budget` seconds, each section's cap and need times `slack`
    (a CPU dry run's toy sizes are not timed, and a shared CPU is slow); returns the wall time."""
    start = time.monotonic()
    end = start + budget
    for i, name in enumerate(names):
        fn, cap, need = SECTIONS[name]
        cap, need = cap * slack, need * slack
        later = sum(SECTIONS[n][2] * slack for n in names[i + 1:])
        allowed = min(cap, end - time.monotonic() - later)
        ck.section, ck.deadline = name, time.monotonic() + allowed
        if allowed < need:
            ck.emit(skipped=f"{allowed:.0f} s of the run's budget left for it, {need:.0f} s needed")
            continue
        print(f"[gpu_check] {name}: up to {allowed:.0f} s", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            with time_limit(allowed):
                fn(ck)
        except SectionTimeout:
            ck.emit(error=f"timed out after {allowed:.0f} s (its budget); the records before it stand")
        except KeyboardInterrupt:  # Ctrl-C, or gpu_check.sh's overall timeout: keep what was measured
            ck.emit(error="interrupted; the sections after it did not run")
            break
        except Exception as e:  # one section's failure must not cost the others their minutes
            first = (str(e).strip().splitlines() or [""])[0][:300]
            ck.emit(error=f"{type(e).__name__}: {first}")
        print(f"[gpu_check] {name}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        free_between_sections(ck.device)
    return time.monotonic() - start


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the CPU dry run")
    ap.add_argument("--out", help="folder of the JSONL results (default docs/gpu; required on the CPU)")
    ap.add_argument("--doc", help="the markdown file whose GPU tables are rendered from OUT/*.jsonl "
                                  "(default docs/benchmarks.md for a GPU run or --render-only; none for a CPU run)")
    ap.add_argument("--budget", type=float, help=f"seconds for all sections (default {GPU_BUDGET_S:.0f}; "
                                                 f"{QUICK_SLACK}x that and every section's cap with --quick)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in run order")
    ap.add_argument("--data", help="a prepared set for the 300-step run (default: built from tests/fixtures)")
    ap.add_argument("--render-only", action="store_true", help="only render the tables from OUT/*.jsonl")
    a = ap.parse_args(argv)
    names = [n for n in a.sections.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise UserError(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    a.sections = [n for n in SECTIONS if n in names]
    if a.device == "cuda" and not torch.cuda.is_available() and not a.render_only:
        raise UserError("--device cuda but torch sees no CUDA device; use --device cpu --quick for the dry run")
    if a.out is None and a.device == "cpu" and not a.render_only:
        raise UserError("a CPU run is a dry run: pass --out DIR (docs/gpu holds GPU runs only)")
    if a.budget is None:
        a.budget = GPU_BUDGET_S * (QUICK_SLACK if a.quick else 1)
    if a.budget <= 0:
        raise UserError(f"--budget must be > 0 seconds, got {a.budget}")
    if a.data is not None and not (Path(a.data) / "manifest.json").is_file():
        raise UserError(f"--data {a.data} is not a prepared set (no manifest.json); prepare it with data_prep")
    a.out = Path(a.out) if a.out else DEFAULT_OUT
    a.doc = Path(a.doc) if a.doc else (DEFAULT_DOC if a.device == "cuda" or a.render_only else None)
    return a


@cli_entry
def main(argv=None) -> int:
    from scripts.gpu_tables import render

    a = parse_args(sys.argv[1:] if argv is None else argv)
    if not a.render_only:
        device = torch.device(a.device)
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        now = dt.datetime.now(dt.timezone.utc)
        a.out.mkdir(parents=True, exist_ok=True)
        ck = Check(device, a.quick, a.out / f"{now:%Y-%m-%d}-{slug(gpu)}.jsonl", f"{now:%Y-%m-%dT%H:%M:%SZ}", gpu,
                   a.data, section="env")
        try:
            ck.emit(**environment(device), quick=a.quick, budget_s=a.budget, sections=a.sections)
        except Exception as e:  # a package probe gone wrong must not cost the measurements
            ck.emit(error=f"{type(e).__name__}: {e}", quick=a.quick, budget_s=a.budget, sections=a.sections)
        wall = run_sections(ck, a.sections, a.budget, QUICK_SLACK if a.quick else 1.0)
        ck.section = "summary"
        ck.emit(wall_s=round(wall, 1), outcomes={n: ck.outcome(n) for n in a.sections})
        print(f"[gpu_check] results in {ck.path}", file=sys.stderr)
    if a.doc is not None:
        render(a.out, a.doc)
        print(f"[gpu_check] tables rendered into {a.doc} from {a.out}/*.jsonl", file=sys.stderr)
    return 0 if a.render_only or all(ck.outcome(n) != "error" for n in a.sections) else 1


if __name__ == "__main__":
    sys.exit(main())
