"""Continued pretraining on a new language through LoRA, with replay of the original language.

    python -m minimodel.cpt --config recipes/configs/cpt_tiny.toml [section.key=value ...]
    torchrun --nproc_per_node=N -m minimodel.cpt --config ... [overrides]

Base: a minimodel run directory or a Hugging Face directory/id (`base.path`). LoRA (peft, or
unsloth on a GPU) on the linear layers, embed_tokens and lm_head trained fully at
optim.lr x lora.embedding_lr_mult; `lora.enabled=false` is full fine-tuning through the same
stage. `data.path` is the new language; `replay.path` + `replay.ratio` mix in the original one, or
`replay.source=generated` has the base write that set itself (minimodel.dream), and `replay.distill`
pulls the model towards the base's distribution on replay windows (minimodel.forgetting.distill), and
`replay.anchor` towards the base's weights where they matter (minimodel.forgetting.anchor). [plasticity]
switches the continual-learning mechanisms beyond replay: metaplasticity (importance accumulated while
training, inherited through the base, damping later updates), surprise-placed LoRA ranks and a split LoRA
(minimodel.forgetting.metaplastic, .surprise_rank, .split_lora).
Held-out bits per byte of both (val_bpb_<language>) are logged at every evaluation, so the
forgetting curve is visible while it happens. A tokenizer extended by data_prep.vocab_ext grows
the embeddings (new rows = mean of the old pieces each new piece decomposes into).
"""
from __future__ import annotations

from pathlib import Path

from minimodel.common.distributed import DistInfo, barrier
from minimodel.config import CptConfig
from minimodel.data.format import read_manifest
from minimodel.data.stage_data import StageData, tokenizer_of
from minimodel.data.windows import TokenShards
from minimodel.forgetting.anchor import FisherAnchor, estimate_fisher
from minimodel.forgetting.dream import DreamSettings, check_settings, write_dream_set
from minimodel.forgetting.guard import ForgettingGuard
from minimodel.forgetting.metaplastic import Metaplasticity, inherited
from minimodel.forgetting.split_lora import SplitLora
from minimodel.forgetting.surprise_rank import allocate_ranks, budget_scale, measure_surprise, rank_pattern
from minimodel.models.causal_lm import CausalLM
from minimodel.models.lora import embedding_weights
from minimodel.stages.lifecycle import Built, stage_entry
from minimodel.stages.on_base import adapt, check_same_tokenizer, load_base, set_name
from minimodel.tokenizers.tokenizer import Tokenizer


class ContinuedPretraining:
    name = "cpt"

    def data(self, cfg: CptConfig, dist: DistInfo) -> StageData:
        data_dir = Path(cfg.data.path)
        train = TokenShards(data_dir, cfg.data.train_split, cfg.data.seq_len)
        val = TokenShards(data_dir, cfg.data.val_split, cfg.data.seq_len)
        taken: set = set()
        val_name = set_name(data_dir, taken)
        extra_val, replay = {}, None
        if cfg.replay.source == "generated":  # the base writes it in model(), before the first step
            check_settings(dream_settings(cfg), dream_dir(cfg))  # bad prompts, another set in the way: now
        elif cfg.replay.path:
            replay_dir = Path(cfg.replay.path)
            check_same_tokenizer(data_dir, replay_dir, "replay set")
            replay = TokenShards(replay_dir, cfg.data.train_split, cfg.data.seq_len)
            extra_val[set_name(replay_dir, taken)] = TokenShards(replay_dir, cfg.replay.val_split, cfg.data.seq_len)
        for extra in cfg.eval.sets:
            check_same_tokenizer(data_dir, Path(extra), "eval set")
            extra_val[set_name(Path(extra), taken)] = TokenShards(extra, cfg.data.val_split, cfg.data.seq_len)
        # the replay set (the base's own language) guards against data from another tokenizer
        known = tuple(extra_val)[:1] if replay is not None else ()
        return StageData(train, val, tokenizer_of(train), extra_val, val_name, known, replay=replay,
                         replay_ratio=cfg.replay.ratio,
                         mark_replay_rows=cfg.replay.distill > 0 or cfg.plasticity.split_lora)

    def model(self, cfg: CptConfig, data: StageData, dist: DistInfo) -> Built:
        lm = load_base(cfg)
        dreamed = None
        if cfg.replay.source == "generated":  # the base as loaded: before any resize or adapter
            dreamed = generate_replay(cfg, lm, data.tokenizer, dist)
            data.replay = TokenShards(dream_dir(cfg), "train", cfg.data.seq_len)
        pc = cfg.plasticity
        surprise: dict = {}
        plan = (lambda resized: plan_ranks(cfg, resized, data, dist, surprise)) if pc.surprise_rank else None
        built = adapt(cfg, lm, data, self.name, rank_plan=plan)
        if surprise:
            built.info["lora_ranks"] = [f"{name}={r}" for name, r in sorted(surprise["ranks"].items())]
            built.summary += (f", ranks by surprise {min(surprise['ranks'].values())}-"
                              f"{max(surprise['ranks'].values())} (budget x{surprise['scale']:.2f})")
        if pc.metaplastic > 0:
            add_metaplasticity(cfg, built, lm, dist)
        if dreamed is not None:
            gen = dreamed["generation"]
            built.info.update(dream_tokens=dreamed["splits"]["train"]["tokens"], dream_seconds=gen["seconds"])
            built.summary += (f", generated replay: {built.info['dream_tokens']} tokens by the base "
                              f"({gen['seconds']:.1f} s) in {dream_dir(cfg)}")
        rc = cfg.replay
        if rc.distill > 0 or rc.anchor > 0 or pc.split_lora:
            anchor = None
            if rc.anchor > 0:  # at the base, before any checkpoint is loaded; on the device that trains
                lm = built.model.to(dist.device)
                anchor = FisherAnchor(lm, estimate_fisher(lm, data.replay, rc.fisher_windows), rc.anchor)
                built.summary += f", Fisher anchor (weight {rc.anchor:g}, {rc.fisher_windows} replay windows)"
            if rc.distill > 0:
                built.summary += f", distillation on replay windows (weight {rc.distill:g})"
            split = None
            if pc.split_lora:
                split = SplitLora(lm.core())
                built.summary += (f", split LoRA (ranks 0-{cfg.lora.rank // 2 - 1} new language, "
                                  f"{cfg.lora.rank // 2}-{cfg.lora.rank - 1} replay)")
            built.model = ForgettingGuard(built.model, rc.distill, lora=cfg.lora.enabled, anchor=anchor, split=split)
        return built


def plan_ranks(cfg: CptConfig, lm: CausalLM, data: StageData, dist: DistInfo, record: dict) -> dict:
    """peft's rank_pattern from the surprise of each adapted matrix at the new language (on the resized base,
    before LoRA); what was measured goes into `record`."""
    pc = cfg.plasticity
    lm.to(dist.device)
    measured = measure_surprise(lm, lm.core(), cfg.lora.target_modules, data.train, data.replay, pc.surprise_windows)
    scale = budget_scale(measured["loss_new"], measured["loss_known"]) if pc.surprise_budget else 1.0
    ranks = allocate_ranks(measured["surprise"], measured["shapes"], cfg.lora.rank, scale)
    record.update(ranks=ranks, scale=scale)
    return rank_pattern(ranks)


def add_metaplasticity(cfg: CptConfig, built: Built, lm: CausalLM, dist: DistInfo) -> None:
    """The metaplastic update rule on the adapted model; at the end, the run's importance (its own plus what the
    base carried) is written to RUN/plasticity/ beside the adapter."""
    base = inherited(lm.run_dir)
    rule = Metaplasticity(lm.core(), embedding_weights(lm.core()), base, cfg.plasticity.metaplastic,
                          cfg.plasticity.damping).to(dist.device)
    built.trained.add_module("metaplastic", rule)  # its accumulators are checkpointed with the trained tensors
    built.update_rule = rule
    built.summary += (f", metaplastic (strength {cfg.plasticity.metaplastic:g}, importance of "
                      f"{base.stages} earlier stage{'s' if base.stages != 1 else ''})")
    finish = built.finish

    def finish_with_importance(run_dir: Path) -> dict:
        total = base.plus(rule.stage_importance())
        where = total.save(run_dir, {"strength": cfg.plasticity.metaplastic})
        return {**finish(run_dir), "importance": str(where)}

    built.finish = finish_with_importance


def generate_replay(cfg: CptConfig, lm: CausalLM, tokenizer: Tokenizer, dist: DistInfo) -> dict:
    """The base writes the replay set (rank 0; the other ranks wait for it); its manifest."""
    out_dir = dream_dir(cfg)
    if dist.is_main:
        lm.to(dist.device)
        write_dream_set(lm, dream_settings(cfg), out_dir, tokenizer, progress=cfg.train.progress)
    barrier(dist)
    return read_manifest(out_dir)


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
