"""Plan before spending: parameters, tokens, FLOPs, memory per GPU, wall time and cost of a
pretraining config, or of a CPT/SFT config (one with a [base]: see scripts/plan_stage.py),
for the common GPUs.

    python -m scripts.plan recipes/configs/core_104m.toml --gpu 4090 --n 8 --global-batch 512
    python -m scripts.plan CONFIG --json          # one JSON line instead of the table

The global batch (sequences per optimizer step) = train.micro_batch x train.grad_accum x GPUs:
micro_batch and grad_accum are per GPU, as the trainer reads them, so `--n 8` alone plans what
`torchrun --nproc_per_node=8 -m minimodel.pretrain --config CONFIG` runs (8x the one-GPU batch).
`--global-batch SEQS` keeps the batch instead and derives grad_accum for the GPUs, as
recipes/pretrain_core.sh does with GLOBAL_BATCH (its PLAN=1 NPROC=8 and `--n 8 --global-batch 512`
print the same plan).

Nothing is allocated: the model is built on the meta device. Time is FLOPs / (peak x MFU),
with MFU assumed per GPU (scripts/gpus.py). The memory model is for eager bf16 training
(torch.compile saves less); see docs/plan.md for the formulas and what they leave out.
"""
from __future__ import annotations

import argparse
import json
import sys

from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import read_toml
from minimodel.config import RunConfig, config_class, load_config
from minimodel.nn.flops import flops_per_token
from minimodel.nn.model import ModelConfig
from minimodel.train.memory_plan import (  # noqa: F401  (the planner's names, as tests and tools use them)
    GIB,
    ModelCounts,
    activation_bytes_per_token_layer,
    count_params,
    live_bytes,
    memory_bytes,
)
from scripts.gpus import GPU, GPUS, PRICES_AS_OF, get_gpu
from scripts.plan_stage import base_model_config, base_numbers

MUON_NS_STEPS = 5                   # torch.optim.Muon's default Newton-Schulz iterations


def fits(total_bytes: float, gpu: GPU) -> bool:
    return total_bytes <= gpu.memory_gib * GIB


def largest_fitting_micro_batch(cfg: RunConfig, m: ModelConfig, counts: ModelCounts, n_gpus: int,
                                gpu: GPU, checkpointing: bool | None = None) -> int:
    """The largest micro batch that divides this rank's batch (micro_batch x grad_accum), so
    grad_accum stays whole and the global batch unchanged, and fits; 0 if none does."""
    per_rank = cfg.train.micro_batch * cfg.train.grad_accum
    # train.grad_checkpoint=auto switches checkpointing on for a micro batch that needs it
    options = [False, True] if cfg.train.grad_checkpoint == "auto" and not (counts.stage or {}).get(
        "checkpointing") else [checkpointing]
    for mb in sorted((k for k in range(1, per_rank + 1) if per_rank % k == 0), reverse=True):
        if any(fits(memory_bytes(cfg, m, counts, mb, n_gpus, ck)["total"], gpu) for ck in options):
            return mb
    return 0


def resolve_checkpointing(cfg, m: ModelConfig, counts: ModelCounts, n_gpus: int, gpu: GPU) -> bool:
    """train.grad_checkpoint as the stage will run it: "auto" is on when the step would not fit `gpu`
    without it (minimodel.stages.on_base.checkpointing_for asks the same question on the real GPU)."""
    stage = counts.stage or {}
    if stage.get("checkpointing") or cfg.train.grad_checkpoint == "true":
        return True
    if cfg.train.grad_checkpoint == "auto":
        return not fits(memory_bytes(cfg, m, counts, cfg.train.micro_batch, n_gpus, False)["total"], gpu)
    return False


def muon_flops_per_step(shapes: list[tuple[int, int]]) -> float:
    """Newton-Schulz on every hidden matrix (each rank runs all of them): per iteration on an
    a x b matrix (a <= b) A = X Xᵀ (2a²b), B = polynomial of A (2a³), B X (2a²b)."""
    total = 0.0
    for rows, cols in shapes:
        a, b = min(rows, cols), max(rows, cols)
        total += MUON_NS_STEPS * (4 * a * a * b + 2 * a ** 3)
    return total


def estimate(cfg: RunConfig, gpu_name: str = "4090", n_gpus: int = 1, mfu: float | None = None,
             usd_per_gpu_hour: float | None = None, cpu_loss: bool = False) -> dict:
    """The plan of `cfg` on `gpu_name`; cpu_loss: memory as the CPU's chunked loss keeps the logits (the
    CPU calibration, scripts/calibrate_plan.py --measure)."""
    if n_gpus < 1:
        raise UserError(f"--n {n_gpus}: the number of GPUs must be at least 1")
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu} must lie in (0, 1]")
    if usd_per_gpu_hour is not None and usd_per_gpu_hour < 0:
        raise UserError(f"--usd-per-gpu-hour {usd_per_gpu_hour} must be >= 0")
    chosen = get_gpu(gpu_name)
    base = getattr(cfg, "base", None)
    m = base_model_config(base.path) if base is not None else cfg.model_config()
    counts = count_params(m)
    tc, seq = cfg.train, cfg.data.seq_len
    if base is not None:
        counts.stage = base_numbers(cfg, m, counts.params)
    ckpt = resolve_checkpointing(cfg, m, counts, n_gpus, chosen)
    tokens_per_step = tc.micro_batch * seq * tc.grad_accum * n_gpus
    total_tokens = tc.steps * tokens_per_step
    fpt = flops_per_token(m, counts.params, seq)
    if base is not None:
        attn = 12 * m.n_layers * seq * m.n_heads * m.head_dim
        # forward + activation gradients everywhere (4/6 of 6N), weight gradients only where trained
        fpt = (fpt - attn) * 4 / 6 + 2 * min(counts.stage["trainable"], counts.params) + attn
    train_flops = fpt * total_tokens
    n_evals = (tc.steps // tc.eval_every + 1) if tc.eval_every > 0 else 0
    eval_flops_per_gpu = n_evals * tc.eval_batches * tc.micro_batch * seq * fpt / 3  # forward only
    muon_on_hidden = cfg.optim.name == "muon" and base is None  # adapter stages: LoRA factors are small
    optim_flops_per_gpu = tc.steps * muon_flops_per_step(counts.hidden_shapes) if muon_on_hidden else 0.0
    flops_per_gpu = train_flops / n_gpus + eval_flops_per_gpu + optim_flops_per_gpu
    mem = memory_bytes(cfg, m, counts, tc.micro_batch, n_gpus, ckpt, cpu_loss)
    grad_bytes = 4 * (counts.stage["trainable"] if base is not None else counts.params)

    rows = []
    for gpu in GPUS.values():
        g_mfu = mfu if mfu is not None else gpu.mfu
        price = usd_per_gpu_hour if (usd_per_gpu_hour is not None and gpu is chosen) else gpu.usd_per_hour
        compute_s = flops_per_gpu / (gpu.peak_bf16_flops * g_mfu)
        # ring all-reduce of fp32 grads once per optimizer step, counted as not overlapped
        comm_s = tc.steps * 2 * (n_gpus - 1) / n_gpus * grad_bytes / (gpu.allreduce_gbps * 1e9)
        hours = (compute_s + comm_s) / 3600
        g_ckpt = resolve_checkpointing(cfg, m, counts, n_gpus, gpu)
        g_mem = memory_bytes(cfg, m, counts, tc.micro_batch, n_gpus, g_ckpt)
        rows.append({"gpu": gpu.name, "peak_tflops": gpu.peak_bf16_flops / 1e12, "mfu": g_mfu,
                     "memory_gib": gpu.memory_gib, "fits": fits(g_mem["total"], gpu),
                     "max_micro_batch": largest_fitting_micro_batch(cfg, m, counts, n_gpus, gpu, g_ckpt),
                     "compute_hours": compute_s / 3600, "comm_hours": comm_s / 3600, "hours": hours,
                     "usd_per_gpu_hour": price, "usd": hours * n_gpus * price})
    row = next(r for r in rows if r["gpu"] == chosen.name)
    suggestion = None
    if not row["fits"] and row["max_micro_batch"]:
        mb = row["max_micro_batch"]
        suggestion = {"micro_batch": mb, "grad_accum": tc.micro_batch * tc.grad_accum // mb}
    return {
        "gpu": chosen.name, "n_gpus": n_gpus,
        "params": counts.params, "params_hidden": counts.hidden, "params_other": counts.other,
        "optimizer": cfg.optim.name, "qk_norm": m.qk_norm, "dtype": tc.dtype,
        "seq_len": seq, "micro_batch": tc.micro_batch, "grad_accum": tc.grad_accum, "steps": tc.steps,
        "global_batch": tc.micro_batch * tc.grad_accum * n_gpus,
        "tokens_per_step": tokens_per_step, "total_tokens": total_tokens,
        "tokens_per_param": total_tokens / counts.params,
        "flops_per_token": fpt, "train_flops": train_flops,
        "eval_flops_per_gpu": eval_flops_per_gpu, "optimizer_flops_per_gpu": optim_flops_per_gpu,
        "memory_per_gpu_gib": {k: v / GIB for k, v in mem.items()},
        "peak_gib": mem["total"] / GIB, "margin_gib": chosen.memory_gib - mem["total"] / GIB,
        "grad_checkpoint": ckpt, "grad_checkpoint_setting": tc.grad_checkpoint, "fits": row["fits"],
        "suggestion": suggestion, "hours": row["hours"],
        "usd": row["usd"],
        "prices_as_of": PRICES_AS_OF, "gpus": rows,
        "stage": getattr(counts, "stage", None),
    }


def _si(x: float, unit: str = "") -> str:
    """2.10G (tokens), 1.63 EFLOP (with a unit)."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{' ' if unit else ''}{prefix}{unit}"
    return f"{x:.0f}{' ' if unit else ''}{unit}"


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x < 100 else f"${x:,.0f}"


def frozen_as(stage: dict) -> str:
    """What the frozen base is kept in, and why (the stage's first log line says the same)."""
    if stage.get("quantize", "none") != "none":
        return f"{stage['quantize']}: base.quantize"
    if stage.get("dtype_setting") == "auto":
        return f"{stage['dtype']}: base.dtype=auto, the checkpoint's own dtype"
    return f"{stage.get('dtype', 'fp32')}: base.dtype={stage.get('dtype_setting', 'fp32')}"


def render(p: dict, config_path: str) -> str:
    mem = p["memory_per_gpu_gib"]
    lines = [
        f"plan: {config_path} on {p['n_gpus']} x {p['gpu']}",
        f"  model       {p['params'] / 1e6:.1f}M params ({p['params_hidden'] / 1e6:.1f}M in hidden matrices), "
        f"{'QK-norm' if p['qk_norm'] else 'no QK-norm'}, optimizer {p['optimizer']}, {p['dtype']}",
        *([f"  adapter     {p['stage']['trainable'] / 1e6:.2f}M trainable ({p['stage']['lora'] / 1e6:.2f}M LoRA), "
            f"{p['stage']['frozen'] / 1e6:.1f}M frozen at {p['stage']['frozen_bytes_per_param']:.2f} bytes/param "
            f"({frozen_as(p['stage'])}), trainable as fp32 masters with fp32 AdamW states"]
          if p.get("stage") and p["stage"]["frozen"] else []),
        f"  batch       {p['micro_batch']} seqs x {p['seq_len']} tokens x {p['grad_accum']} accum x {p['n_gpus']} GPUs"
        f" = {p['global_batch']:,} seqs = {p['tokens_per_step']:,} tokens/step (global batch)",
        f"  tokens      {p['steps']:,} steps -> {_si(p['total_tokens'])} tokens "
        f"({p['tokens_per_param']:.1f} per param)",
        f"  FLOPs       {_si(p['flops_per_token'], 'FLOP')}/token -> {_si(p['train_flops'], 'FLOP')} to train",
        *([f"  activation checkpointing {'on' if p['grad_checkpoint'] else 'off'} (train.grad_checkpoint="
            f"{p['grad_checkpoint_setting']})"] if p.get("stage") else []),
        "  memory/GPU  " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in mem.items() if k != "total" and v)
        + f" -> {mem['total']:.1f} GiB (estimate)",
        "",
        f"  {'GPU':<10} {'TFLOP/s':>8} {'MFU':>5} {'GPU mem':>8} {'fits':>5} {'max mb':>7} {'wall time':>10}"
        f" {'$/GPU-h':>8} {'cost':>9}",
    ]
    for r in p["gpus"]:
        mark = "*" if r["gpu"] == p["gpu"] else " "
        lines.append(f"{mark} {r['gpu']:<10} {r['peak_tflops']:>8.0f} {r['mfu']:>5.2f} {r['memory_gib']:>5.0f} GiB"
                     f" {'yes' if r['fits'] else 'NO':>5} {r['max_micro_batch'] or '-':>7} {_hours(r['hours']):>10}"
                     f" {r['usd_per_gpu_hour']:>8.2f} {_usd(r['usd']):>9}")
    if p["n_gpus"] > 1 and not p.get("global_batch_fixed"):
        one = p["micro_batch"] * p["grad_accum"]
        lines += ["", f"  note: micro_batch x grad_accum is per GPU, so {p['n_gpus']} GPUs make the global batch "
                  f"{p['n_gpus']}x the one-GPU batch ({one} -> {p['global_batch']:,} seqs); to keep {one}, add "
                  f"--global-batch {one} (recipes/pretrain_core.sh keeps its GLOBAL_BATCH this way)."]
    lines += ["", f"  wall time = FLOPs / (peak x assumed MFU) + gradient all-reduce; prices as of {p['prices_as_of']}"
              " (scripts/gpus.py; --mfu, --usd-per-gpu-hour override).",
              "  max mb = the largest micro_batch that fits and divides micro_batch x grad_accum."]
    if p["fits"]:
        lines.append(f"  fits: about {mem['total']:.1f} GiB of the {p['gpu']}'s "
                     f"{GPUS[p['gpu']].memory_gib:.0f} GiB per GPU.")
    elif p["suggestion"]:
        s = p["suggestion"]
        lines.append(f"  WILL NOT FIT: about {mem['total']:.1f} GiB per GPU, the {p['gpu']} has "
                     f"{GPUS[p['gpu']].memory_gib:.0f} GiB. Largest micro batch that fits: {s['micro_batch']}; "
                     f"use train.micro_batch={s['micro_batch']} train.grad_accum={s['grad_accum']} "
                     "(same global batch).")
    else:
        lines.append(f"  WILL NOT FIT: about {mem['total']:.1f} GiB per GPU, the {p['gpu']} has "
                     f"{GPUS[p['gpu']].memory_gib:.0f} GiB, even at micro_batch=1: lower data.seq_len, "
                     "shrink the model, or use a GPU with more memory.")
    return "\n".join(lines)


def keep_global_batch(cfg, seqs: int, n_gpus: int) -> None:
    """grad_accum for `seqs` sequences per step on n_gpus GPUs (the recipe's GLOBAL_BATCH rule)."""
    per_step = cfg.train.micro_batch * max(n_gpus, 1)
    if seqs < 1 or seqs % per_step:
        raise UserError(f"--global-batch {seqs} is not a positive multiple of train.micro_batch={cfg.train.micro_batch}"
                        f" x {n_gpus} GPUs; change --global-batch or train.micro_batch")
    cfg.train.grad_accum = seqs // per_step


def config_class_of(path: str, overrides: list[str]):
    """Pretraining config, or a CPT/SFT stage config (one with a [base]) read as CptConfig."""
    try:
        raw = read_toml(path)
    except UserError:
        return RunConfig  # load_config reports the problem
    return config_class({**raw, **{o.split(".", 1)[0]: {} for o in overrides}})


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m scripts.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a pretraining config (recipes/configs/*.toml)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, as minimodel.pretrain takes them")
    ap.add_argument("--gpu", default="4090", help=f"one of {', '.join(GPUS)} (default 4090)")
    ap.add_argument("--n", type=int, default=1, help="number of GPUs in all (nodes x GPUs per node); the global "
                    "batch is micro_batch x grad_accum x n (both per GPU, as the trainer reads them)")
    ap.add_argument("--global-batch", type=int, default=None, metavar="SEQS",
                    help="keep this many sequences per optimizer step on --n GPUs: grad_accum = SEQS / "
                    "(micro_batch x n), as recipes/pretrain_core.sh derives it from GLOBAL_BATCH")
    ap.add_argument("--mfu", type=float, default=None, help="assumed MFU for every GPU (default: per-GPU table)")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=None, help="price of the chosen GPU")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    return ap.parse_intermixed_args(argv)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.overrides, cls=config_class_of(args.config, args.overrides))
    if args.global_batch is not None:
        keep_global_batch(cfg, args.global_batch, args.n)
    plan = estimate(cfg, args.gpu, args.n, args.mfu, args.usd_per_gpu_hour)
    plan["global_batch_fixed"] = args.global_batch is not None
    print(json.dumps({"config": args.config, **plan}) if args.json else render(plan, args.config), flush=True)
    return plan


if __name__ == "__main__":
    main()
