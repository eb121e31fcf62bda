"""What each [plasticity] switch costs a CPT stage: wall time and peak memory against the same stage without it,
measured in one run (each configuration in its own process, alternating, so that peak memory is its own and
machine noise hits all alike).

    python -m scripts.bench plasticity [--steps 40] [--rounds 2] [--threads 1]

The stage is the continual CPU preset's second one (Russian after Korean, 25% real replay of en+ko), from a
first stage trained here with metaplasticity on, so that metaplasticity runs with an inherited importance (its
full cost). Needs the quick start's core (runs/quickstart/core) and the sequence data (recipes/continual.sh
PLAN=0 prepares data/continual). Prints one JSON object: per switch the median stage seconds (process wall,
set-up included), training tokens/s, peak resident memory, state on disk, and their ratios to "off".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minimodel.train.tracking import read_metrics

SWITCHES = {"off": [], "metaplastic": ["plasticity.metaplastic=10"],
            "surprise_rank": ["plasticity.surprise_rank=true"], "split_lora": ["plasticity.split_lora=true"]}


def stage_args(plan: dict, k: int, base: str, out: Path, steps: int) -> list[str]:
    s = plan["stages"][k]
    return ["--config", "recipes/configs/cpt_tiny.toml", f"base.path={base}", f"data.path={s['train']}",
            f"replay.path={s['replay']}", "replay.ratio=0.25", f"train.out_dir={out}", f"train.steps={steps}",
            f"train.log_every={steps}", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
            "train.progress=false"]


def run_stage(args: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minimodel.cpt", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def last_metrics(run_dir: Path) -> dict:
    return next(r for r in reversed(read_metrics(run_dir)) if "tok_per_s" in r)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench plasticity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="data/continual")
    ap.add_argument("--base", default="runs/quickstart/core")
    a = ap.parse_args(argv)
    plan_file = Path(a.data) / "plan.json"
    if not plan_file.is_file() or not (Path(a.base) / "final").is_dir():
        sys.exit(f"error: needs {plan_file} and {a.base}/final: run bash recipes/quickstart.sh, then "
                 "PLAN=0 ARMS=none SEEDS=0 bash recipes/continual.sh (it prepares the sequence data)")
    plan = json.loads(plan_file.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = tmp / "first"
        run_stage(stage_args(plan, 1, a.base, first, a.steps) + SWITCHES["metaplastic"], a.threads)
        seconds: dict[str, list[float]] = {k: [] for k in SWITCHES}
        seen: dict[str, dict] = {}
        for r in range(a.rounds):
            for name, extra in SWITCHES.items():
                out = tmp / f"{name}_{r}"
                seconds[name].append(run_stage(stage_args(plan, 2, str(first), out, a.steps) + extra, a.threads))
                m = last_metrics(out)
                state = out / "plasticity" / "importance.safetensors"
                seen.setdefault(name, {"tok_per_s": [], "peak_rss_gib": [], "state_bytes": 0})
                seen[name]["tok_per_s"].append(m["tok_per_s"])
                seen[name]["peak_rss_gib"].append(m.get("peak_rss_gib") or m.get("peak_mem_gib"))
                seen[name]["state_bytes"] = state.stat().st_size if state.is_file() else 0
    result = {"bench": "plasticity", "steps": a.steps, "rounds": a.rounds, "threads": a.threads, "switches": {}}
    off_s, off_tok = statistics.median(seconds["off"]), statistics.median(seen["off"]["tok_per_s"])
    off_mem = max(seen["off"]["peak_rss_gib"])
    for name in SWITCHES:
        sec, tok, mem = statistics.median(seconds[name]), statistics.median(seen[name]["tok_per_s"]), \
            max(seen[name]["peak_rss_gib"])
        result["switches"][name] = {"stage_s": round(sec, 2), "tok_per_s": round(tok, 1), "peak_rss_gib": round(mem, 3),
                                    "state_bytes": seen[name]["state_bytes"],
                                    "stage_time_ratio": round(sec / off_s, 3),
                                    "train_time_ratio": round(off_tok / tok, 3),
                                    "peak_memory_ratio": round(mem / off_mem, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
