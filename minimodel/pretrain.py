"""Pretrain a core from scratch.

    python -m minimodel.pretrain --config recipes/configs/core_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.pretrain --config ... [overrides]

Writes runs/<name>/: config.toml (resolved), metrics.jsonl, checkpoints/step_N/, final/.
Re-running with the same config resumes from the last good checkpoint.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from data_prep.atomic import write_text
from minimodel.config import RunConfig, dump_toml, load_config
from minimodel.data import TokenShards, token_byte_lengths
from minimodel.distributed import barrier, cleanup, init_distributed
from minimodel.errors import UserError, cli_entry
from minimodel.export import export_final
from minimodel.model import MiniModel
from minimodel.optim import build_optimizers
from minimodel.tracking import Tracker
from minimodel.trainer import preflight, train

# Keys that may change between a run and its resumption without changing the result's meaning.
RESUMABLE_CHANGES = {("train", k) for k in ("steps", "stop_at_step", "log_every", "eval_every",
                                             "ckpt_every", "keep_last", "progress", "compile",
                                             "attn_logit_every", "device")} | {("tracking", "wandb"),
                                                                                ("tracking", "run_name")}


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
    import tomllib

    path = run_dir / "config.toml"
    if not path.is_file():
        return
    old = tomllib.loads(path.read_text(encoding="utf-8"))
    old.pop("run", None)
    diffs = [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}"
             for s, values in resolved.items() for k, v in values.items()
             if (s, k) not in RESUMABLE_CHANGES and old.get(s, {}).get(k) != v]
    if diffs:
        raise UserError(f"{run_dir} holds a run with another config ({'; '.join(diffs[:3])}); "
                        "use another train.out_dir or delete the old run")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m minimodel.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML config (recipes/configs/*.toml)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=0.01 train.steps=500")
    return ap.parse_args(argv)


def run(cfg: RunConfig) -> dict:
    dist = init_distributed(cfg.train.device)
    try:
        torch.manual_seed(cfg.train.seed)  # identical init on every rank
        mcfg = cfg.model_config()
        train_data = TokenShards(cfg.data.path, cfg.data.train_split, cfg.data.seq_len, mcfg.vocab_size)
        val_data = TokenShards(cfg.data.path, cfg.data.val_split, cfg.data.seq_len, mcfg.vocab_size)
        run_dir = Path(cfg.train.out_dir)
        resolved = cfg.to_dict()
        check_same_run(run_dir, resolved)
        model = MiniModel(mcfg).to(dist.device)
        optimizers = build_optimizers(model, cfg.optim)
        if dist.is_main:
            preflight(run_dir, model, n_optim_states=2)
            write_text(run_dir / "config.toml", dump_toml({**resolved, "run": {
                "commit": git_commit(), "command": command_line(), "world_size": dist.world_size,
                "device": device_description(dist.device), "params": model.num_params()}}))
        barrier(dist)
        tok_path = train_data.data_dir / train_data.manifest["tokenizer"]["file"]
        token_bytes = token_byte_lengths(tok_path, mcfg.vocab_size)
        tracker = Tracker(run_dir, resolved, enabled=dist.is_main, use_wandb=cfg.tracking.wandb,
                          project=cfg.tracking.project, run_name=cfg.tracking.run_name,
                          total_steps=cfg.train.steps, progress=cfg.train.progress)
        if dist.is_main:
            tracker.write(f"model: {model.num_params() / 1e6:.2f}M params ({'QK-norm' if mcfg.qk_norm else 'no QK-norm'}), "
                          f"optimizer: {cfg.optim.name}, {cfg.train.steps} steps, world size {dist.world_size}, "
                          f"device {dist.device.type}")
        state = train(model, optimizers, cfg, dist, run_dir, train_data, val_data, tracker, token_bytes)
        tracker.close()
        if dist.is_main and state.step >= cfg.train.steps:
            final = export_final(model, run_dir, train_data.data_dir, train_data.manifest)
            print(f"done: {state.step} steps, {state.tokens} tokens; weights in {final}", file=sys.stderr)
        barrier(dist)
        return {"step": state.step, "tokens": state.tokens, "run_dir": str(run_dir), "model": model}
    finally:
        cleanup(dist)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
