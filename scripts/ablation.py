"""The optimizer x QK-norm ablation: {AdamW, Muon} x {QK-norm off, on}.

    python -m scripts.ablation --preset cpu --out runs/ablation
    torchrun --nproc_per_node=8 -m scripts.ablation --preset gpu104m --out runs/ablation_104m

Fair by construction: every arm gets the same data, tokens, warmup and cosine decay,
its own learning-rate sweep (seed 0), then extra seeds at its best learning rate.
With Muon's "match_rms_adamw" convention one lr serves both Muon and its AdamW group,
so all arms sweep the same grid. Arms are compared at the end of training (after
decay); see scripts/ablation_summary.py for what summary.json holds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from minimodel.common.distributed import cleanup, init_distributed
from minimodel.common.errors import UserError, cli_entry
from minimodel.config import load_config
from scripts.ablation_summary import final_val_loss, run_name, summarize

ARMS = {  # name -> (optimizer, qk_norm)
    "adamw": ("adamw", False),
    "adamw_qknorm": ("adamw", True),
    "muon": ("muon", False),
    "muon_qknorm": ("muon", True),
}


@dataclass
class Preset:
    overrides: dict
    lrs: list[float]
    seeds: int = 2
    notes: str = ""
    extra: dict = field(default_factory=dict)


PRESETS = {
    # ~1.3M params on the English demo set, 250 steps x 4096 tokens (~1 epoch): ~75 s a run
    # on 2 CPU cores, 4 arms x (5 lrs + 1 extra seed) = 24 runs.
    "cpu": Preset(
        overrides={"data.path": "data/demo_en_base", "data.seq_len": 256, "model.preset": "tiny",
                   "model.vocab_size": 4096, "train.steps": 250, "train.micro_batch": 16,
                   "train.eval_every": 25, "train.eval_batches": 4, "train.ckpt_every": 300,
                   "train.attn_logit_every": 25, "optim.warmup_steps": 25, "optim.schedule": "cosine",
                   "optim.min_lr_frac": 0.0, "train.dtype": "bf16"},
        lrs=[0.001, 0.003, 0.01, 0.03, 0.1],
        notes="tiny core (1.3M params) on data/demo_en_base (English-only 4096 tokenizer), 1.0M tokens per run"),
    # MiniMind2's 104M shape at seq 1024; ~1B tokens per run. Point DATA at a prepared corpus.
    "gpu104m": Preset(
        overrides={"data.path": "data/pretrain", "data.seq_len": 1024, "model.preset": "104m",
                   "train.steps": 4000, "train.micro_batch": 16, "train.grad_accum": 4,
                   "train.eval_every": 250, "train.eval_batches": 16, "train.ckpt_every": 1000,
                   "train.attn_logit_every": 250, "optim.warmup_steps": 200, "optim.schedule": "cosine",
                   "optim.min_lr_frac": 0.0, "train.compile": True},
        lrs=[0.001, 0.002, 0.004, 0.008],
        notes="104M core, seq 1024, 4000 steps x 64 sequences per GPU-step group"),
    # seconds per run: for tests of the machinery only
    "smoke": Preset(
        overrides={"data.seq_len": 64, "model.preset": "tiny", "model.d_model": 32, "model.n_layers": 2,
                   "model.n_heads": 2, "model.n_kv_heads": 1, "model.ffn_dim": 64, "train.steps": 12,
                   "train.micro_batch": 8, "train.eval_every": 4, "train.eval_batches": 2,
                   "train.ckpt_every": 12, "train.attn_logit_every": 4, "optim.warmup_steps": 2,
                   "optim.min_lr_frac": 0.0},
        lrs=[0.003, 0.03], seeds=2, notes="smoke test: a 2-layer d=32 model, 12 steps"),
}


def arm_overrides(arm: str, lr: float, seed: int) -> dict:
    optim, qk = ARMS[arm]
    ov = {"optim.name": optim, "model.qk_norm": qk, "optim.lr": lr, "train.seed": seed}
    if optim == "muon":
        ov.update({"optim.adam_lr": lr, "optim.muon_adjust_lr_fn": "match_rms_adamw"})
    return ov


def to_args(overrides: dict) -> list[str]:
    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)
    return [f"{k}={lit(v)}" for k, v in overrides.items()]


def train_one(out: Path, name: str, overrides: dict, quiet: bool) -> Path:
    """Train one run (skipped when its final weights exist; resumed when interrupted)."""
    from minimodel.pretrain import run

    run_dir = out / "runs" / name
    if (run_dir / "final" / "model.safetensors").is_file():
        return run_dir
    cfg = load_config(None, to_args({**overrides, "train.out_dir": str(run_dir), "train.progress": False}))
    if os.environ.get("RANK", "0") == "0":
        print(f"[ablation] {name}", file=sys.stderr, flush=True)
    sink = io.StringIO() if quiet else sys.stderr
    with contextlib.redirect_stderr(sink):
        run(cfg)
    return run_dir


def best_lr(out: Path, arm: str, lrs: list[float]) -> float:

    losses = {lr: final_val_loss(out / "runs" / run_name(arm, lr, 0)) for lr in lrs}
    return min(losses, key=lambda lr: losses[lr])


def run_ablation(out: Path, preset: Preset, arms: list[str], extra: dict, quiet: bool = True,
                 write: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    base = {**preset.overrides, **extra}
    for arm in arms:  # the sweep, seed 0
        for lr in preset.lrs:
            train_one(out, run_name(arm, lr, 0), {**base, **arm_overrides(arm, lr, 0)}, quiet)
    for arm in arms:  # more seeds at each arm's best lr
        lr = best_lr(out, arm, preset.lrs)
        for seed in range(1, preset.seeds):
            train_one(out, run_name(arm, lr, seed), {**base, **arm_overrides(arm, lr, seed)}, quiet)
    plan = {"arms": arms, "lrs": preset.lrs, "seeds": preset.seeds, "overrides": base, "notes": preset.notes}
    return summarize(out, plan, write=write)


def plan_ablation(preset: Preset, arms: list[str], extra: dict, gpu: str, n_gpus: int) -> dict:
    """Runs x the planner's estimate of one run (arms differ only in optimizer and QK-norm)."""
    from scripts.plan import estimate

    runs = len(arms) * (len(preset.lrs) + preset.seeds - 1)
    per_run = {arm: estimate(load_config(None, to_args({**preset.overrides, **extra,
                                                           **arm_overrides(arm, preset.lrs[0], 0)})),
                             gpu, n_gpus) for arm in arms}
    hours = sum(p["hours"] for p in per_run.values()) / len(arms) * runs
    one = next(iter(per_run.values()))
    return {"runs": runs, "gpu": one["gpu"], "n_gpus": n_gpus, "tokens_per_run": one["total_tokens"],
            "memory_per_gpu_gib": round(max(p["memory_per_gpu_gib"]["total"] for p in per_run.values()), 2),
            "fits": all(p["fits"] for p in per_run.values()), "hours": round(hours, 2),
            "usd": round(sum(p["usd"] for p in per_run.values()) / len(arms) * runs, 2)}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m scripts.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help=f"one of {sorted(PRESETS)}")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {list(ARMS)}")
    ap.add_argument("--lrs", help="comma-separated learning rates replacing the preset's grid, e.g. 0.003,0.01")
    ap.add_argument("--seeds", type=int, help="override the preset's number of seeds")
    ap.add_argument("--verbose", action="store_true", help="show each run's own output")
    ap.add_argument("--plan", action="store_true", help="print the number of runs, time and cost; train nothing")
    ap.add_argument("--gpu", default="4090", help="with --plan: the GPU to price (scripts/gpus.py)")
    ap.add_argument("--n", type=int, default=1, help="with --plan: GPUs per run")
    ap.add_argument("overrides", nargs="*", help="section.key=value applied to every run, e.g. data.path=...")
    return ap.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.preset not in PRESETS:
        raise UserError(f"unknown ablation preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise UserError(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
    preset = dataclasses.replace(PRESETS[args.preset])
    if args.lrs:
        try:
            preset.lrs = sorted(float(x) for x in args.lrs.split(","))
        except ValueError:
            raise UserError(f"--lrs must be comma-separated numbers, got {args.lrs!r}") from None
    if args.seeds:
        preset.seeds = args.seeds
    extra = {}
    for item in args.overrides:
        if "=" not in item:
            raise UserError(f"bad override {item!r}: write section.key=value")
        k, v = item.split("=", 1)
        extra[k] = v
    load_config(None, to_args({**preset.overrides, **extra}))  # validate before hours of work
    if args.plan:
        print(json.dumps(plan_ablation(preset, arms, extra, args.gpu, args.n)))
        return
    # Under torchrun, one process group serves every run (re-creating it per run is fragile).
    dist = init_distributed("auto")
    try:
        summary = run_ablation(Path(args.out), preset, arms, extra, quiet=not args.verbose or dist.rank != 0,
                               write=dist.is_main)
    finally:
        cleanup(dist)
    if dist.is_main:
        print(json.dumps({k: {m: summary["arms"][k][m] for m in ("best_lr", "final_val_loss_mean",
                                                                  "tokens_ratio_to_best_adamw")}
                          for k in summary["arms"]}))


if __name__ == "__main__":
    main()
