"""Pretrain a core from scratch.

    python -m minimodel.pretrain --config recipes/configs/core_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.pretrain --config ... [overrides]

Writes runs/<name>/: config.toml (resolved), metrics.jsonl, checkpoints/step_N/, final/.
Re-running with the same config resumes from the last good checkpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from data_prep.atomic import write_text
from minimodel.config import RunConfig, dump_toml, load_config, parse_stage_args
from minimodel.data import TokenShards, token_byte_lengths
from minimodel.distributed import barrier, cleanup, init_distributed
from minimodel.errors import cli_entry
from minimodel.export import export_final
from minimodel.model import MiniModel
from minimodel.optim import build_optimizers
from minimodel.rundir import check_same_run, command_line, device_description, git_commit
from minimodel.tracking import Tracker
from minimodel.trainer import preflight, train

def parse_args(argv):
    return parse_stage_args(argv, "python -m minimodel.pretrain", __doc__, "recipes/configs/*.toml",
                            "optim.lr=0.01 train.steps=500")


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
