"""Hold the planner (scripts/plan.py) against runs that happened: for each run directory, the
compute time and memory the planner gives for what the run did, beside what it measured.

    python -m scripts.calibrate_plan RUN_DIR [RUN_DIR ...] [--json]
    python -m scripts.calibrate_plan runs/ablation_cpu/runs/*/* runs/quickstart/*

Measured, from the run directory: training seconds and tokens from its last checkpoint
(`elapsed_s` counts training steps only, not evaluation or checkpoint writes), the device
and world size from config.toml, peak GPU memory (`peak_mem_gib` in metrics.jsonl, CUDA runs).
Planned: the same steps' FLOPs (the planner's count, Muon's Newton-Schulz included) divided
by peak x MFU. On a GPU the planner knows, MFU is its assumption (scripts/gpus.py), so the
error is the planner's. On a device it has no profile for (a CPU), the MFU is the median
measured on the *other* runs of that device given here (leave one out): the error then says
how well "time = FLOPs / a steady throughput" carries from one config to another. The memory
compared is the planner's live bytes (its total without allocator slack and CUDA context)
against torch.cuda.max_memory_allocated.

    python -m scripts.calibrate_plan --measure [--json]

`--measure` needs no runs: it measures the peak memory of real CPT steps (LoRA r128 on every projection,
embeddings trained, bf16 autocast, two AdamW steps) at the reference bases' real shapes with random
weights, on this CPU, one process per case (scripts/measure_memory.py), with the frozen base in fp32
(before base.dtype) and bf16, checkpointing off and on, and prints the plan's error for each. Minutes
on one core; the peaks do not depend on the machine's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from minimodel.common.errors import UserError, cli_entry
from minimodel.config import read_run_config
from minimodel.nn.flops import CPU_PEAK_FLOPS, PEAK_BF16_FLOPS
from minimodel.train.checkpoint import latest_checkpoint
from minimodel.train.tracking import read_metrics
from scripts.gpus import GPUS
from scripts.plan import estimate

# Device-name fragments (as torch.cuda.get_device_name reports them) -> the planner's GPU.
GPU_NAMES = [("H200", "h200"), ("H100", "h100"), ("A100-SXM4-80GB", "a100-80gb"), ("A100 80GB", "a100-80gb"),
             ("A100", "a100-40gb"), ("4090", "4090"), ("3090", "3090")]


def planner_gpu(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    return next((gpu for fragment, gpu in GPU_NAMES if fragment in device), None)


def peak_flops(device: str, gpu: str | None) -> float:
    """The peak the run's MFU is measured against: the planner's table, else the trainer's
    (minimodel/nn/flops.py, the figure its logged MFU used)."""
    if gpu:
        return GPUS[gpu].peak_bf16_flops
    if device.startswith("cuda"):
        return next((peak for name, peak in PEAK_BF16_FLOPS.items() if name in device), 312e12)
    return CPU_PEAK_FLOPS


def read_run(run_dir: Path) -> dict:
    """What one finished or stopped run measured, and its config as the planner reads it."""
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.toml): pass the directories that "
                        "minimodel.pretrain / cpt / sft wrote")
    record = read_run_config(run_dir)
    cfg, run = record.config, record.run
    found = latest_checkpoint(run_dir / "checkpoints")
    if found is None or not found[1].get("elapsed_s"):
        raise UserError(f"{run_dir} has no checkpoint with timing (checkpoints/step_N/checkpoint.json "
                        "elapsed_s): it stopped before its first checkpoint")
    meta = found[1]
    peaks = [m["peak_mem_gib"] for m in read_metrics(run_dir) if m.get("peak_mem_gib") is not None]
    return {"run": str(run_dir), "cfg": cfg, "device": run.device or "unknown",
            "world_size": run.world_size, "steps": meta["step"],
            "tokens": meta["tokens"], "seconds": meta["elapsed_s"],
            "peak_mem_gib": max(peaks) if peaks else None}


def planned_flops_per_rank(r: dict) -> tuple[float, dict]:
    """FLOPs each rank spent on the steps the run did (training + optimizer, no evaluation)."""
    cfg, n = r["cfg"], r["world_size"]
    plan = estimate(cfg, "4090", n_gpus=n)  # the GPU only matters for time, which is computed here
    done = r["steps"] / cfg.train.steps
    return (plan["train_flops"] / n + plan["optimizer_flops_per_gpu"]) * done, plan


def calibrate(run_dirs: list[Path]) -> dict:
    runs = [read_run(Path(d)) for d in run_dirs]
    for r in runs:
        r["flops"], plan = planned_flops_per_rank(r)
        gpu = planner_gpu(r["device"])
        r["planner_gpu"] = gpu
        r["peak_flops"] = peak_flops(r["device"], gpu)
        r["measured_mfu"] = r["flops"] / (r["seconds"] * r["peak_flops"])
        mem = plan["memory_per_gpu_gib"]
        r["planned_live_gib"] = mem["total"] - mem["fragmentation"] - mem["cuda_context"]
    rows = []
    for r in runs:
        if r["planner_gpu"]:
            mfu, source = GPUS[r["planner_gpu"]].mfu, f"assumed for {r['planner_gpu']} (scripts/gpus.py)"
        else:
            others = [o["measured_mfu"] for o in runs if o is not r and o["device"] == r["device"]]
            mfu, source = (statistics.median(others), f"median of {len(others)} other runs on this device") \
                if others else (None, "no profile and no other run on this device")
        planned = r["flops"] / (r["peak_flops"] * mfu) if mfu else None
        rows.append({
            "run": r["run"], "device": r["device"], "world_size": r["world_size"], "steps": r["steps"],
            "tokens": r["tokens"], "measured_s": r["seconds"], "tok_per_s": r["tokens"] / r["seconds"],
            "measured_mfu": r["measured_mfu"], "planned_mfu": mfu, "mfu_source": source, "planned_s": planned,
            "time_error": planned / r["seconds"] - 1 if planned else None,
            "measured_peak_mem_gib": r["peak_mem_gib"], "planned_live_mem_gib": r["planned_live_gib"],
            "memory_error": (r["planned_live_gib"] / r["peak_mem_gib"] - 1) if r["peak_mem_gib"] else None,
        })
    errors = [abs(x["time_error"]) for x in rows if x["time_error"] is not None]
    mem_errors = [abs(x["memory_error"]) for x in rows if x["memory_error"] is not None]
    return {"runs": rows, "time_abs_error_median": statistics.median(errors) if errors else None,
            "time_abs_error_max": max(errors) if errors else None,
            "memory_abs_error_median": statistics.median(mem_errors) if mem_errors else None}


def render(result: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:+.0%}"

    lines = [f"{'run':<44} {'device':<22} {'tokens':>9} {'measured':>9} {'planned':>9} {'error':>6} "
             f"{'MFU meas':>8} {'MFU plan':>8} {'mem err':>7}"]
    for r in result["runs"]:
        planned = "-" if r["planned_s"] is None else f"{r['planned_s']:.1f}s"
        lines.append(f"{r['run'][-44:]:<44} {r['device'][:22]:<22} {r['tokens']:>9,} {r['measured_s']:>8.1f}s "
                     f"{planned:>9} {pct(r['time_error']):>6} {r['measured_mfu']:>8.3f} "
                     f"{'-' if r['planned_mfu'] is None else format(r['planned_mfu'], '.3f'):>8} "
                     f"{pct(r['memory_error']):>7}")
    if result["time_abs_error_median"] is not None:
        lines.append(f"time: median |error| {result['time_abs_error_median']:.0%}, "
                     f"max {result['time_abs_error_max']:.0%} over {len(result['runs'])} runs")
    if result["memory_abs_error_median"] is not None:
        lines.append(f"memory (live bytes vs max_memory_allocated): median |error| "
                     f"{result['memory_abs_error_median']:.0%}")
    return "\n".join(lines)


# (base, layers (None: all), sequence length, micro batch): small enough for one CPU core in minutes
MEASURED_SHAPES = [("HuggingFaceTB/SmolLM2-135M", None, 512, 2), ("Qwen/Qwen3-0.6B", None, 256, 2),
                   ("meta-llama/Llama-3.2-1B", None, 256, 1)]
SETTINGS = [("fp32", False), ("bf16", False), ("bf16", True)]  # the first: the step before base.dtype


def measure_cases(shapes=MEASURED_SHAPES, settings=SETTINGS) -> dict:
    """Every shape x setting in its own process (its peak is its own), then the table's numbers."""
    rows = []
    for base, layers, seq, mb in shapes:
        for dtype, ckpt in settings:
            cmd = [sys.executable, "-m", "scripts.measure_memory", base, "--dtype", dtype, "--seq", str(seq),
                   "--micro-batch", str(mb), *(["--layers", str(layers)] if layers else []),
                   *(["--grad-checkpoint"] if ckpt else [])]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode:
                raise UserError(f"{' '.join(cmd[2:])} failed: {done.stderr.strip().splitlines()[-1:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  measured {base} {dtype} ckpt={ckpt}: {rows[-1]['measured_gib']:.3f} GiB", file=sys.stderr)
    for r in rows:  # the target: a step's peak against the same shape's step before base.dtype (fp32, no ckpt)
        today = next(o for o in rows if o["base"] == r["base"] and o["base_dtype"] == "fp32"
                     and not o["grad_checkpoint"])
        r["vs_fp32_no_ckpt"] = round(r["measured_gib"] / today["measured_gib"], 3)
    errors = [abs(r["error"]) for r in rows]
    return {"device": "cpu", "cases": rows, "memory_abs_error_max": max(errors),
            "memory_abs_error_median": statistics.median(errors)}


def render_measured(result: dict) -> str:
    lines = [f"{'base':<28} {'layers':>6} {'seq x mb':>9} {'base dtype':>10} {'ckpt':>5} {'measured':>9} "
             f"{'planned':>9} {'error':>6} {'vs fp32':>7}"]
    for r in result["cases"]:
        ckpt = "on" if r["grad_checkpoint"] else "off"
        lines.append(f"{r['base']:<28} {r['layers']:>6} {r['seq']:>5} x {r['micro_batch']:<1} {r['base_dtype']:>10} "
                     f"{ckpt:>5} {r['measured_gib']:>7.3f} G {r['planned_gib']:>7.3f} G "
                     f"{r['error']:>+6.1%} {r['vs_fp32_no_ckpt']:>6.2f}x")
    lines.append(f"planner vs measured peak (live tensor bytes): max |error| {result['memory_abs_error_max']:.1%}, "
                 f"median {result['memory_abs_error_median']:.1%}")
    return "\n".join(lines)


@cli_entry
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scripts.calibrate_plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="*", help="run directories written by the training stages")
    ap.add_argument("--measure", action="store_true", help="measure CPT steps at the reference shapes on this CPU")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.measure:
        result = measure_cases()
        print(json.dumps(result) if args.json else render_measured(result), flush=True)
        return result
    if not args.run_dirs:
        raise UserError("give run directories to calibrate against, or --measure")
    result = calibrate([Path(d) for d in args.run_dirs])
    print(json.dumps(result) if args.json else render(result), flush=True)
    return result


if __name__ == "__main__":
    main()
