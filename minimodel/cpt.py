"""Continued pretraining on a new language through LoRA, with replay of the original language.

    python -m minimodel.cpt --config recipes/configs/cpt_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.cpt --config ... [overrides]

Base: a minimodel run directory or a Hugging Face directory/id (`base.path`). LoRA (peft, or
unsloth on a GPU) on the linear layers, embed_tokens and lm_head trained fully at
optim.lr x lora.embedding_lr_mult; `lora.enabled=false` is full fine-tuning through the same
stage. `data.path` is the new language; `replay.path` + `replay.ratio` mix in the original one.
Held-out bits per byte of both (val_bpb_<language>) are logged at every evaluation, so the
forgetting curve is visible while it happens. A tokenizer extended by data_prep.vocab_ext grows
the embeddings (new rows = mean of the old pieces each new piece decomposes into).
"""
from __future__ import annotations

import sys
from pathlib import Path

from minimodel.config import CptConfig, load_config, parse_stage_args
from minimodel.data import TokenShards, TrainStream
from minimodel.distributed import cleanup, init_distributed
from minimodel.errors import cli_entry
from minimodel.replay import ReplayStream
from minimodel.stage import check_same_tokenizer, run_stage, set_name


def run(cfg: CptConfig) -> dict:
    dist = init_distributed(cfg.train.device)
    try:
        data_dir = Path(cfg.data.path)
        train_data = TokenShards(data_dir, cfg.data.train_split, cfg.data.seq_len)
        val_data = TokenShards(data_dir, cfg.data.val_split, cfg.data.seq_len)
        taken: set = set()
        val_name = set_name(data_dir, taken)
        extra_val, replay = {}, None
        if cfg.replay.path:
            replay_dir = Path(cfg.replay.path)
            check_same_tokenizer(data_dir, replay_dir, "replay set")
            replay = TokenShards(replay_dir, cfg.data.train_split, cfg.data.seq_len)
            extra_val[set_name(replay_dir, taken)] = TokenShards(replay_dir, cfg.replay.val_split, cfg.data.seq_len)
        for extra in cfg.eval.sets:
            check_same_tokenizer(data_dir, Path(extra), "eval set")
            extra_val[set_name(Path(extra), taken)] = TokenShards(extra, cfg.data.val_split, cfg.data.seq_len)

        def make_stream(position: int):
            if replay is not None and cfg.replay.ratio > 0:
                return ReplayStream(train_data, replay, cfg.replay.ratio, cfg.train.seed,
                                    dist.rank, dist.world_size, position)
            return TrainStream(train_data, cfg.train.seed, dist.rank, dist.world_size, position)

        return run_stage(cfg, dist, "cpt", train_data, val_data, data_dir, make_stream=make_stream,
                         extra_val=extra_val, val_name=val_name)
    finally:
        cleanup(dist)


def parse_args(argv):
    return parse_stage_args(argv, "python -m minimodel.cpt", __doc__, "recipes/configs/cpt_*.toml",
                            "replay.ratio=0.05 lora.rank=16")


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run(load_config(args.config, args.overrides, cls=CptConfig))


if __name__ == "__main__":
    main()
