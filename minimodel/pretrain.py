"""Pretrain a core from scratch.

    python -m minimodel.pretrain --config recipes/configs/core_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.pretrain --config ... [overrides]

Writes runs/<name>/: config.toml (resolved), metrics.jsonl, checkpoints/step_N/, final/.
Re-running with the same config resumes from the last good checkpoint.
"""
from __future__ import annotations

from minimodel.common.distributed import DistInfo
from minimodel.config import RunConfig
from minimodel.data.stage_data import StageData, tokenizer_of
from minimodel.data.windows import TokenShards
from minimodel.models.export import export_final
from minimodel.nn.model import MiniModel
from minimodel.stages.lifecycle import Built, stage_entry


class Pretrain:
    name = "pretrain"

    def data(self, cfg: RunConfig, dist: DistInfo) -> StageData:
        train = TokenShards(cfg.data.path, cfg.data.train_split, cfg.data.seq_len)
        val = TokenShards(cfg.data.path, cfg.data.val_split, cfg.data.seq_len)
        return StageData(train, val, tokenizer_of(train))

    def model(self, cfg: RunConfig, data: StageData, dist: DistInfo) -> Built:
        model = MiniModel(cfg.model_config())
        summary = (f"model: {model.num_params() / 1e6:.2f}M params "
                   f"({'QK-norm' if model.config.qk_norm else 'no QK-norm'}), optimizer: {cfg.optim.name}, "
                   f"{cfg.train.steps} steps")
        return Built(model, model, {"params": model.num_params()}, summary,
                     lambda run_dir: {"final": str(export_final(model, run_dir, data.train.data_dir,
                                                                data.train.manifest))})


run, main = stage_entry(Pretrain(), RunConfig, __doc__, "recipes/configs/*.toml", "optim.lr=0.01 train.steps=500")

if __name__ == "__main__":
    main()
