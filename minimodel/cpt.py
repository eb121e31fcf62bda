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

from pathlib import Path

from minimodel.config import CptConfig
from minimodel.data import StageData, TokenShards, TrainStream
from minimodel.distributed import DistInfo
from minimodel.replay import ReplayStream
from minimodel.stage import Built, adapter_model, check_same_tokenizer, set_name, stage_entry


class ContinuedPretraining:
    name = "cpt"

    def data(self, cfg: CptConfig, dist: DistInfo) -> StageData:
        data_dir = Path(cfg.data.path)
        train = TokenShards(data_dir, cfg.data.train_split, cfg.data.seq_len)
        val = TokenShards(data_dir, cfg.data.val_split, cfg.data.seq_len)
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

        def stream(position: int):
            if replay is not None and cfg.replay.ratio > 0:
                return ReplayStream(train, replay, cfg.replay.ratio, cfg.train.seed,
                                    dist.rank, dist.world_size, position)
            return TrainStream(train, cfg.train.seed, dist.rank, dist.world_size, position)

        known = tuple(extra_val)[:1] if replay is not None else ()  # the replay set: the base's own language
        return StageData(train, val, data_dir / train.manifest["tokenizer"]["file"], stream, extra_val, val_name,
                         known)

    def model(self, cfg: CptConfig, data: StageData) -> Built:
        return adapter_model(cfg, data, self.name)


run, main = stage_entry(ContinuedPretraining(), CptConfig, __doc__, "recipes/configs/cpt_*.toml",
                        "replay.ratio=0.05 lora.rank=16")

if __name__ == "__main__":
    main()
