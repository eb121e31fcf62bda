"""Continued pretraining on a new language through LoRA, with replay of the original language.

    python -m minimodel.cpt --config recipes/configs/cpt_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.cpt --config ... [overrides]

Base: a minimodel run directory or a Hugging Face directory/id (`base.path`). LoRA (peft, or
unsloth on a GPU) on the linear layers, embed_tokens and lm_head trained fully at
optim.lr x lora.embedding_lr_mult; `lora.enabled=false` is full fine-tuning through the same
stage. `data.path` is the new language; `replay.path` + `replay.ratio` mix in the original one, or
`replay.source=generated` has the base write that set itself (minimodel.dream), and `replay.distill`
pulls the model towards the base's distribution on replay windows (minimodel.forgetting.distill), and
`replay.anchor` towards the base's weights where they matter (minimodel.forgetting.anchor).
Held-out bits per byte of both (val_bpb_<language>) are logged at every evaluation, so the
forgetting curve is visible while it happens. A tokenizer extended by data_prep.vocab_ext grows
the embeddings (new rows = mean of the old pieces each new piece decomposes into).
"""
from __future__ import annotations

from pathlib import Path

from minimodel.common.distributed import DistInfo, barrier
from minimodel.config import CptConfig
from minimodel.data.replay import ReplayStream
from minimodel.data.windows import StageData, TokenShards, TrainStream
from minimodel.forgetting.anchor import FisherAnchor, estimate_fisher
from minimodel.forgetting.dream import DreamSettings, check_settings, write_dream_set
from minimodel.forgetting.guard import ForgettingGuard
from minimodel.stages.lifecycle import Built, stage_entry
from minimodel.stages.on_base import adapter_model, check_same_tokenizer, set_name


class ContinuedPretraining:
    name = "cpt"

    def data(self, cfg: CptConfig, dist: DistInfo) -> StageData:
        data_dir = Path(cfg.data.path)
        train = TokenShards(data_dir, cfg.data.train_split, cfg.data.seq_len)
        val = TokenShards(data_dir, cfg.data.val_split, cfg.data.seq_len)
        taken: set = set()
        val_name = set_name(data_dir, taken)
        extra_val, replay = {}, {}
        self.dream, self.dist, self.replay = None, dist, replay
        if cfg.replay.source == "generated":  # the base writes it in model(), before the first step
            self.dream = (dream_settings(cfg), dream_dir(cfg), replay)
            check_settings(*self.dream[:2])  # bad prefixes, or another set in the way: now, before any work
        elif cfg.replay.path:
            replay_dir = Path(cfg.replay.path)
            check_same_tokenizer(data_dir, replay_dir, "replay set")
            replay["set"] = TokenShards(replay_dir, cfg.data.train_split, cfg.data.seq_len)
            extra_val[set_name(replay_dir, taken)] = TokenShards(replay_dir, cfg.replay.val_split, cfg.data.seq_len)
        for extra in cfg.eval.sets:
            check_same_tokenizer(data_dir, Path(extra), "eval set")
            extra_val[set_name(Path(extra), taken)] = TokenShards(extra, cfg.data.val_split, cfg.data.seq_len)

        def stream(position: int):
            if replay and cfg.replay.ratio > 0:
                return ReplayStream(train, replay["set"], cfg.replay.ratio, cfg.train.seed,
                                    dist.rank, dist.world_size, position, mark_rows=cfg.replay.distill > 0)
            return TrainStream(train, cfg.train.seed, dist.rank, dist.world_size, position)

        # the replay set (the base's own language) guards against data from another tokenizer
        known = tuple(extra_val)[:1] if "set" in replay else ()
        return StageData(train, val, data_dir / train.manifest["tokenizer"]["file"], stream, extra_val, val_name,
                         known)

    def model(self, cfg: CptConfig, data: StageData) -> Built:
        dreamed = {}

        def dream(lm) -> None:  # the base as loaded: before any resize or adapter
            settings, out_dir, replay = self.dream
            if self.dist.is_main:
                if lm.device != self.dist.device:
                    lm.to(self.dist.device)
                dreamed.update(write_dream_set(lm, settings, out_dir, data.tokenizer,
                                               progress=cfg.train.progress))
            barrier(self.dist)
            replay["set"] = TokenShards(out_dir, "train", cfg.data.seq_len)
            if not dreamed:
                dreamed.update(replay["set"].manifest)

        built = adapter_model(cfg, data, self.name, on_base=dream if self.dream else None)
        if dreamed:
            gen = dreamed["generation"]
            built.info.update(dream_tokens=dreamed["splits"]["train"]["tokens"], dream_seconds=gen["seconds"])
            built.summary += (f", generated replay: {built.info['dream_tokens']} tokens by the base "
                              f"({gen['seconds']:.1f} s) in {self.dream[1]}")
        rc = cfg.replay
        if rc.distill > 0 or rc.anchor > 0:
            anchor = None
            if rc.anchor > 0:  # at the base, before any checkpoint is loaded; on the device that trains
                lm = built.model.to(self.dist.device)
                anchor = FisherAnchor(lm, estimate_fisher(lm, self.replay["set"], rc.fisher_windows), rc.anchor)
                built.summary += f", Fisher anchor (weight {rc.anchor:g}, {rc.fisher_windows} replay windows)"
            if rc.distill > 0:
                built.summary += f", distillation on replay windows (weight {rc.distill:g})"
            built.model = ForgettingGuard(built.model, rc.distill, lora=cfg.lora.enabled, anchor=anchor)
        return built


def dream_dir(cfg: CptConfig) -> Path:
    return Path(cfg.replay.path) if cfg.replay.path else Path(cfg.train.out_dir) / "dream"


def dream_settings(cfg: CptConfig) -> DreamSettings:
    rc = cfg.replay
    return DreamSettings(base=cfg.base.path, tokens=rc.tokens, seq_len=cfg.data.seq_len, seed=cfg.train.seed,
                         temperature=rc.temperature, top_p=rc.top_p, prompts=rc.prompts, batch=rc.batch)


run, main = stage_entry(ContinuedPretraining(), CptConfig, __doc__, "recipes/configs/cpt_*.toml",
                        "replay.ratio=0.05 lora.rank=16")

if __name__ == "__main__":
    main()
