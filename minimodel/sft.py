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

import json
import sys
from pathlib import Path

from minimodel.common.distributed import DistInfo
from minimodel.common.errors import UserError
from minimodel.config import StageConfig
from minimodel.data.format import read_manifest
from minimodel.data.stage_data import StageData, tokenizer_of
from minimodel.data.windows import SFTExamples, TokenShards
from minimodel.stages.lifecycle import Built, stage_entry
from minimodel.stages.on_base import adapt, load_base, set_name


class InstructionSFT:
    name = "sft"

    def data(self, cfg: StageConfig, dist: DistInfo) -> StageData:
        data_dir = Path(cfg.data.path)
        train = SFTExamples(data_dir, cfg.data.train_split, cfg.data.seq_len)
        val = SFTExamples(data_dir, cfg.data.val_split, cfg.data.seq_len)
        if dist.is_main and train.truncated:
            print(f"note: {train.truncated} training examples are longer than data.seq_len+1 and are "
                  "truncated; raise data.seq_len to keep them whole", file=sys.stderr)
        taken, extra_val, ours = {"sft"}, {}, train.manifest["tokenizer"]["sha256"]
        for extra in cfg.eval.sets:
            shards = TokenShards(extra, "val", cfg.data.seq_len)
            if shards.manifest["tokenizer"]["sha256"] != ours:
                raise UserError(self._foreign_eval_set(cfg, extra, data_dir, ours))
            extra_val[set_name(Path(extra), taken)] = shards
        return StageData(train, val, tokenizer_of(train), extra_val, "sft")

    @staticmethod
    def _foreign_eval_set(cfg: StageConfig, bad: str, data_dir: Path, ours: str) -> str:
        """The error for an eval set of another tokenizer, with the override that drops every such set
        (the shipped demo configs list sentencepiece sets that a Hugging Face base cannot read)."""
        keep = [s for s in cfg.eval.sets if read_manifest(Path(s))["tokenizer"]["sha256"] == ours]
        return (f"eval set {bad} was tokenised with another tokenizer than the SFT set {data_dir}; drop it with "
                f"eval.sets={json.dumps(keep)} (for a Hugging Face base, start from "
                "recipes/configs/sft_hf_base.toml), or prepare it with data_prep.prepare --tokenizer BASE")

    def model(self, cfg: StageConfig, data: StageData, dist: DistInfo) -> Built:
        return adapt(cfg, load_base(cfg), data, self.name)


run, main = stage_entry(InstructionSFT(), StageConfig, __doc__, "recipes/configs/sft_*.toml",
                        "lora.enabled=false optim.name=muon")


if __name__ == "__main__":
    main()
