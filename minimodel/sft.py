"""Instruction SFT: the loss only on assistant tokens (data_prep.sft's mask).

    python -m minimodel.sft --config recipes/configs/sft_core_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.sft --config ...

The same stage machinery as continued pretraining (stage.py): `lora.enabled=false` fine-tunes
a core fully (optim.name muon or adamw); on top of a CPT result (`base.path = runs/cpt`, whose
final/ is the merged model) LoRA is the reference recipe's second stage. `data.path` is a set
from `python -m data_prep.sft`; `eval.sets` adds shard sets whose held-out bits per byte are
logged beside it (how much each language keeps while the model learns to answer).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from minimodel.config import StageConfig
from minimodel.data import StageData, TokenShards, TrainStream, check_tokenizer, load_sft_split
from minimodel.distributed import DistInfo
from minimodel.errors import UserError
from minimodel.stage import Built, adapter_model, set_name, stage_entry

IGNORE = -100


class SFTExamples:
    """One example per row, right-padded to seq_len+1 tokens (longer ones truncated). Targets are
    the next tokens where the mask marks assistant text, -100 elsewhere (prompt, padding).
    A data.Windows like TokenShards, so TrainStream and evaluate take it."""

    def __init__(self, set_dir: str | Path, split: str, seq_len: int):
        self.data_dir = Path(set_dir)
        # the manifest's structure, the split's files and their agreement are checked by load_sft_split
        self.manifest, self.ids, self.mask, self.index = load_sft_split(self.data_dir, split)
        check_tokenizer(self.data_dir, self.manifest)
        self.info = self.manifest["splits"][split]
        self.seq_len, self.pad_id = seq_len, self.manifest["tokenizer"].get("pad_id", 0)
        self.n_windows = len(self.index) - 1
        if self.n_windows <= 0:
            raise UserError(f"split {split!r} of {self.data_dir} holds no examples")
        self.truncated = int(np.sum(np.diff(self.index) > seq_len + 1))

    def check_vocab(self, vocab_size: int, fix: str | None = None) -> None:
        top = int(self.ids.max(initial=0))
        if top >= vocab_size:
            raise UserError(f"{self.data_dir} holds token id {top} >= the model's {vocab_size} rows: "
                            "the SFT data and the base disagree on the tokenizer")

    def example(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.index[k], min(self.index[k + 1], self.index[k] + self.seq_len + 1)
        ids = np.full(self.seq_len + 1, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.seq_len + 1, dtype=np.int64)
        ids[:b - a], mask[:b - a] = self.ids[a:b], self.mask[a:b]
        return ids, mask

    def window(self, k: int) -> np.ndarray:
        return self.example(k)[0]

    def batch(self, window_ids) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = zip(*(self.example(int(k)) for k in window_ids))
        ids, mask = torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(mask))
        y = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
        return ids[:, :-1].contiguous(), y.contiguous()


class InstructionSFT:
    name = "sft"

    def data(self, cfg: StageConfig, dist: DistInfo) -> StageData:
        data_dir = Path(cfg.data.path)
        train = SFTExamples(data_dir, cfg.data.train_split, cfg.data.seq_len)
        val = SFTExamples(data_dir, cfg.data.val_split, cfg.data.seq_len)
        if dist.is_main and train.truncated:
            print(f"note: {train.truncated} training examples are longer than data.seq_len+1 and are "
                  "truncated; raise data.seq_len to keep them whole", file=sys.stderr)
        taken, extra_val = {"sft"}, {}
        for extra in cfg.eval.sets:
            shards = TokenShards(extra, "val", cfg.data.seq_len)
            if shards.manifest["tokenizer"]["sha256"] != train.manifest["tokenizer"]["sha256"]:
                raise UserError(f"eval set {extra} was tokenised with another tokenizer than the SFT set {data_dir}")
            extra_val[set_name(Path(extra), taken)] = shards
        return StageData(train, val, data_dir / train.manifest["tokenizer"]["file"],
                         lambda position: TrainStream(train, cfg.train.seed, dist.rank, dist.world_size, position),
                         extra_val, "sft")

    def model(self, cfg: StageConfig, data: StageData) -> Built:
        return adapter_model(cfg, data, self.name)


run, main = stage_entry(InstructionSFT(), StageConfig, __doc__, "recipes/configs/sft_*.toml",
                        "lora.enabled=false optim.name=muon")

if __name__ == "__main__":
    main()
