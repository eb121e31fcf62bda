"""The one config schema: every section a dataclass whose checks sit beside its fields, loaded
from TOML, overridable as `section.key=value`, validated with messages that name the bad key,
dumped resolved into the run directory, and read back from it (`read_run_config`) by everything
that looks at a run (eval, the report, export, the planner).

    RunConfig     pretraining: [model] [optim] [data] [train] [tracking]
    StageConfig   SFT on a base: [base] [lora] [optim] [data] [train] [eval] [tracking]
    CptConfig     continued pretraining: StageConfig + [replay]
A run directory's config.toml adds [run] (`RunInfo`: provenance, written by the stage, never a setting).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from minimodel.common.errors import UserError
from minimodel.common.io import read_toml, tomllib
from minimodel.nn.model import PRESETS, ModelConfig, model_config_from


def choice(default: str, *options: str):
    """A string field that must be one of `options` (checked at load, named in the error)."""
    return field(default=default, metadata={"choices": (default, *options)})


def _positive(section: str, obj, *keys: str) -> None:
    for key in keys:
        if not getattr(obj, key) > 0:
            raise UserError(f"config key {section}.{key} must be > 0, got {getattr(obj, key)!r}")


def _in_range(section: str, obj, key: str, low: float, high: float) -> None:
    """low <= value < high: what torch's optimizers would otherwise reject with a traceback."""
    v = getattr(obj, key)
    if not low <= v < high:
        raise UserError(f"config key {section}.{key} must be >= {low}, got {v!r}" if high == math.inf else
                        f"config key {section}.{key} must lie in [{low}, {high}), got {v!r}")


class Section:
    """A config section: a dataclass whose own checks run when it is loaded."""

    def check(self) -> None:
        """Ranges and combinations of this section's fields (types and choices are checked on load)."""


@dataclass
class ModelSection(Section):
    """[model]: a preset (tiny, 26m, 104m) and any ModelConfig field overriding it."""
    preset: str | None = "tiny"         # None: ModelConfig's defaults (a model file's own config)
    vocab_size: int | None = None
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    ffn_dim: int | None = None
    qk_norm: bool | None = None
    tie_embeddings: bool | None = None
    rope_theta: float | None = None
    rms_eps: float | None = None
    max_seq_len: int | None = None
    init_std: float | None = None

    def model_config(self) -> ModelConfig:
        overrides = {f.name: getattr(self, f.name) for f in fields(self)
                     if f.name != "preset" and getattr(self, f.name) is not None}
        try:
            return model_config_from(self.preset, **overrides)
        except (ValueError, TypeError, ZeroDivisionError) as e:  # derived sizes too: name what was set
            given = ", ".join(f"model.{k}={v}" for k, v in overrides.items())
            raise UserError(f"[model] {e}" + (f" (given {given})" if given else "")) from None

    def check(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise UserError(f"unknown model.preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for f in fields(self):  # a zero or negative size would fail deep inside torch (head_dim 0: derived)
            v = getattr(self, f.name)
            positive = v > 0 or (v == 0 and f.name == "head_dim") if isinstance(v, (int, float)) else True
            if not isinstance(v, bool) and not positive:
                raise UserError(f"config key model.{f.name} must be > 0, got {v!r}")
        self.model_config()  # the shape is consistent now, not at the first step


assert {f.name for f in fields(ModelSection)} == {"preset"} | {f.name for f in fields(ModelConfig)}


MAX_LR = 10.0  # no recipe trains above it; the bound keeps the value representable in torch's float32


@dataclass
class OptimConfig(Section):
    name: str = choice("muon", "adamw")  # "muon" (Muon on hidden matrices + AdamW) | "adamw"
    lr: float = 0.01                    # Muon lr (hidden matrices); with name="adamw" the lr of all of them
    adam_lr: float = 0.01               # AdamW lr for embeddings, lm_head and norms under "muon"
    weight_decay: float = 0.1           # decoupled; applied to 2-D matrices only
    muon_momentum: float = 0.95
    muon_adjust_lr_fn: str = choice("match_rms_adamw", "original")  # torch.optim.Muon's two conventions
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0              # 0 disables
    schedule: str = choice("cosine", "wsd", "constant")  # warmup + cosine | warmup-stable-decay | constant
    warmup_steps: int = 20
    decay_frac: float = 0.2             # wsd: share of steps spent decaying
    min_lr_frac: float = 0.1            # final lr as a fraction of the peak

    def check(self) -> None:
        _positive("optim", self, "lr", "adam_lr", "eps")
        for key in ("lr", "adam_lr"):  # torch keeps lr as float32: 3.4e38 and up is a traceback, not a step
            if getattr(self, key) > MAX_LR:
                raise UserError(f"config key optim.{key} must be <= {MAX_LR:g}, got {getattr(self, key)!r} "
                                f"(usual values lie between 1e-5 and 0.05)")
        for key in ("beta1", "beta2", "muon_momentum"):
            _in_range("optim", self, key, 0, 1)
        for key in ("weight_decay", "grad_clip", "warmup_steps"):  # grad_clip 0 disables clipping
            _in_range("optim", self, key, 0, math.inf)
        if not 0 <= self.decay_frac <= 1 or not 0 <= self.min_lr_frac <= 1:
            raise UserError("optim.decay_frac and optim.min_lr_frac must lie in [0, 1]")


@dataclass
class DataConfig(Section):
    path: str = "data/demo_en"          # a prepared set: manifest.json + shards
    seq_len: int = 256
    train_split: str = "train"
    val_split: str = "val"

    def check(self) -> None:
        _positive("data", self, "seq_len")


@dataclass
class TrainConfig(Section):
    out_dir: str = "runs/core"
    steps: int = 200
    micro_batch: int = 16               # sequences per rank per micro-step
    grad_accum: int = 1
    dtype: str = choice("bf16", "fp32")  # bf16 autocast | fp32
    compile: bool = False
    seed: int = 1337
    device: str = choice("auto", "cpu", "cuda")
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 100
    keep_last: int = 2
    attn_logit_every: int = 100         # 0 disables; QK-norm exists to bound this
    progress: bool = True
    stop_at_step: int = 0               # >0: checkpoint and exit there (time-sliced jobs); resume later
    on_nonfinite: str = choice("skip", "stop")  # NaN/inf loss or gradient: skip the update (counted) | stop
    max_consecutive_skips: int = 20     # that many skipped steps in a row stop the run anyway
    spike_sigma: float = 6.0            # log a loss this many running std above its running mean; 0: off
    # Activation (gradient) checkpointing: keep each block's input, recompute the block in backward.
    # "auto": on when the memory plan says the step would not fit the GPU (never on a CPU).
    grad_checkpoint: str = choice("false", "true", "auto")

    def check(self) -> None:
        _positive("train", self, "steps", "micro_batch", "grad_accum", "eval_batches", "keep_last")
        for key in ("log_every", "eval_every", "ckpt_every"):  # every N steps: 0 would divide by zero mid-run
            if getattr(self, key) <= 0:
                raise UserError(f"config key train.{key} must be > 0 (steps between two of them; set it to "
                                f"train.steps for once at the end), got {getattr(self, key)!r}")
        for key in ("attn_logit_every", "stop_at_step"):  # 0 turns them off
            _in_range("train", self, key, 0, math.inf)
        if self.max_consecutive_skips < 0 or not self.spike_sigma >= 0:
            raise UserError("train.max_consecutive_skips and train.spike_sigma must be >= 0 (spike_sigma=0 turns "
                            "spike logging off)")


@dataclass
class TrackingConfig(Section):
    wandb: bool = False                 # WANDB_MODE (online/offline/disabled) is honoured
    project: str = "minimodel"
    run_name: str = ""


# Adapter stages (continued pretraining, SFT): the model comes from a base, so there is no
# [model] section; LoRA, the base and (for CPT) replay get their own sections.
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class BaseConfig(Section):
    path: str = ""                      # a minimodel run directory (its final/), a Hugging Face dir, or a hub id
    trust_remote_code: bool = False     # only for hub architectures that need it, when you trust them
    # The frozen base's weights: "auto" keeps the checkpoint's own torch_dtype (bf16 for Mistral, Llama,
    # Qwen, SmolLM; fp32 for a minimodel export), so a 7B costs 14 GB, not 28. Trainable tensors (LoRA
    # factors, embeddings, lm_head) are fp32 masters whatever this says (minimodel.models.memory).
    dtype: str = choice("auto", "bf16", "fp32")
    quantize: str = choice("none", "nf4", "int8")  # a 4-/8-bit frozen base through bitsandbytes (QLoRA)

    def check(self) -> None:
        if not self.path:
            raise UserError("config key base.path is empty: name the base (a minimodel run directory, "
                            "a Hugging Face directory or a hub id)")


@dataclass
class LoraConfig(Section):
    enabled: bool = True                # false: full fine-tuning through the same stage (the reference arm)
    backend: str = choice("peft", "unsloth")  # peft (CPU and GPU) | unsloth (GPU; Hugging Face bases)
    rank: int = 128
    alpha: float = 32.0
    rslora: bool = True                 # scale alpha / sqrt(rank) instead of alpha / rank
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    train_embeddings: bool = True       # embed_tokens and lm_head trained fully, at their own lr
    embedding_lr_mult: float = 0.2      # their lr = optim.lr x this (unsloth's recipe: 1e-5 for 5e-5)
    embedding_optim: str = choice("adamw", "adamw8bit")  # adamw8bit: bitsandbytes' blockwise 8-bit states
                                        # for embed_tokens/lm_head (2 bytes per parameter instead of 8)
    load_in_4bit: bool = False          # unsloth backend: 4-bit (QLoRA) frozen base

    def check(self) -> None:
        for key in ("rank", "alpha", "embedding_lr_mult"):
            if not getattr(self, key) > 0:
                raise UserError(f"config key lora.{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"config key lora.dropout must lie in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            raise UserError("config key lora.target_modules is empty; name the linear layers to adapt, "
                            "e.g. q_proj,v_proj")
        if self.backend == "unsloth" and not self.enabled:
            raise UserError("lora.backend=unsloth needs lora.enabled=true; full fine-tuning runs on the peft backend")
        if self.embedding_optim == "adamw8bit" and not (self.enabled and self.train_embeddings):
            raise UserError("lora.embedding_optim=adamw8bit is the optimizer of the trained embeddings: set "
                            "lora.train_embeddings=true (and lora.enabled=true), or lora.embedding_optim=adamw")
        if self.load_in_4bit and self.backend != "unsloth":
            raise UserError("lora.load_in_4bit=true needs lora.backend=unsloth (a GPU and bitsandbytes); "
                            "with the peft backend use base.quantize=nf4")


@dataclass
class ReplayConfig(Section):
    """[replay]: original-language windows mixed into CPT. `source = "data"` reads a prepared set;
    `source = "generated"` has the frozen base write that set itself before the first step ("dream"
    replay: for a base whose pretraining data you do not have), into `path` (default
    <train.out_dir>/dream). `distill` adds that weight x KL(base || model) on replay windows."""
    path: str = ""                      # the original-language set (same tokenizer as data.path);
                                        # with source = "generated": where the generated set goes
    ratio: float = 0.0                  # share of training windows drawn from it: 0, 0.05, 0.25 ...
    val_split: str = "val"
    source: str = choice("data", "generated")
    tokens: int = 0                     # generated: tokens to sample (required; the error says what the run reads)
    temperature: float = 1.0            # generated: sampling temperature
    top_p: float = 1.0                  # generated: nucleus sampling (1.0: the base's own distribution, unbiased)
    prompts: str = ""                   # generated: "" samples from the start of a document; else a UTF-8 file
    #                                     of short prefixes, one per line, used in turn
    batch: int = 64                     # generated: samples drawn at once
    distill: float = 0.0                # weight of the KL to the base's next-token distribution on replay windows
    anchor: float = 0.0                 # EWC-style pull towards the base, Fisher-weighted on the replay set (0: off)
    fisher_windows: int = 32            # replay windows the anchor's Fisher is estimated on

    def check(self) -> None:
        if not 0 <= self.ratio < 1:
            raise UserError(f"config key replay.ratio must lie in [0, 1), got {self.ratio}")
        if self.ratio > 0 and not self.path and self.source == "data":
            raise UserError(f"replay.ratio={self.ratio} but replay.path is empty; name the original-language set "
                            "(or set replay.source=generated to have the base write one)")
        if self.distill and self.ratio == 0:
            raise UserError(f"replay.distill={self.distill} needs replay windows to distil on: set replay.ratio "
                            "(e.g. 0.05) and a replay source")
        for key in ("distill", "anchor"):
            if not getattr(self, key) >= 0:
                raise UserError(f"config key replay.{key} must be >= 0, got {getattr(self, key)}")
        if self.anchor and self.source == "data" and not self.path:
            raise UserError(f"replay.anchor={self.anchor} estimates its Fisher on a replay set: set replay.path, or "
                            "replay.source=generated (EWC without the old data)")
        _positive("replay", self, "fisher_windows")
        if self.source == "generated":
            if not 0 < self.temperature <= 10 or not 0 < self.top_p <= 1:
                raise UserError(f"replay.temperature must lie in (0, 10] and replay.top_p in (0, 1], got "
                                f"{self.temperature} and {self.top_p}")
            _positive("replay", self, "batch")


@dataclass
class PlasticityConfig(Section):
    """[plasticity]: continual-learning mechanisms beyond replay (docs/continual.md); all off by default."""
    metaplastic: float = 0.0            # viscosity: an update is divided by 1 + this x the importance the base's
                                        # stages accumulated (mean 1 per stage); the run accumulates its own (0: off)
    damping: float = 1e-3               # metaplastic: added to a matrix's squared movement when normalising
    surprise_rank: bool = False         # place the LoRA rank budget by each matrix's surprise at the new language
    surprise_windows: int = 8           # surprise_rank: windows of each language the gradients are measured on
    surprise_budget: bool = False       # surprise_rank: also scale the budget by sqrt(new / known loss), in [1/2, 2]
    split_lora: bool = False            # ranks [0, r/2) learn from the new language only, [r/2, r) from replay only

    def check(self) -> None:
        for key in ("metaplastic", "damping"):
            if not getattr(self, key) >= 0:
                raise UserError(f"config key plasticity.{key} must be >= 0, got {getattr(self, key)}")
        _positive("plasticity", self, "surprise_windows")


@dataclass
class EvalConfig(Section):
    sets: list = field(default_factory=list)  # more prepared sets whose held-out bpb is logged as val_bpb_<name>


def _stage_optim() -> OptimConfig:
    # The reference recipe (unsloth CPT): AdamW 5e-5, no decay on adapters, re-warmup then decay.
    return OptimConfig(name="adamw", lr=5e-5, adam_lr=5e-5, weight_decay=0.0, warmup_steps=10)


@dataclass
class Config:
    """The sections every stage has; the stages' configs below add theirs."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> None:
        """Checks across sections (each section checks its own fields)."""

    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}


@dataclass
class RunConfig(Config):
    """Pretraining a core from scratch."""
    model: ModelSection = field(default_factory=ModelSection)

    def model_config(self) -> ModelConfig:
        return self.model.model_config()

    def check(self) -> None:
        if self.data.seq_len > self.model_config().max_seq_len:
            raise UserError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                            f"{self.model_config().max_seq_len}; raise model.max_seq_len")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "model": {"preset": self.model.preset, **self.model_config().to_dict()}}


@dataclass
class StageConfig(Config):
    """A stage on top of a base: SFT (and, with [replay], continued pretraining)."""
    optim: OptimConfig = field(default_factory=_stage_optim)
    base: BaseConfig = field(default_factory=BaseConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        super().check()
        q = self.base.quantize
        if q != "none" and self.lora.backend == "unsloth":
            raise UserError(f"base.quantize={q} is the peft backend's switch; with lora.backend=unsloth use "
                            "lora.load_in_4bit=true")
        if q != "none" and not self.lora.enabled:
            raise UserError(f"base.quantize={q} freezes the base in {q}: full fine-tuning (lora.enabled=false) "
                            "cannot train it; set base.quantize=none or lora.enabled=true")


@dataclass
class CptConfig(StageConfig):
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)

    def check(self) -> None:
        super().check()
        rc, pc = self.replay, self.plasticity
        if self.lora.enabled and self.optim.lr * self.lora.embedding_lr_mult > MAX_LR:
            raise UserError(f"config key lora.embedding_lr_mult x optim.lr must be <= {MAX_LR:g} (the embeddings' "
                            f"lr), got {self.lora.embedding_lr_mult!r} x {self.optim.lr!r}")
        lora_only = [k for k in ("metaplastic", "surprise_rank", "split_lora") if getattr(pc, k)]
        if lora_only and (not self.lora.enabled or self.lora.backend != "peft"):
            raise UserError(f"plasticity.{lora_only[0]} acts on a peft LoRA stage: set lora.enabled=true and "
                            "lora.backend=peft (or turn it off)")
        if pc.split_lora and (rc.ratio == 0 or self.lora.rank < 2):
            raise UserError("plasticity.split_lora trains half the ranks on replay windows: set replay.ratio > 0 "
                            f"with a replay source, and lora.rank >= 2 (got ratio {rc.ratio}, rank {self.lora.rank})")
        if rc.source == "generated" and rc.tokens <= 0:
            reads = self.replay_tokens_read()
            raise UserError(f"replay.source=generated needs replay.tokens > 0 (got {rc.tokens}): how many tokens "
                            f"the base should write. This run reads about {reads} replay tokens per process "
                            f"(replay.ratio x steps x batch); e.g. replay.tokens={max(reads, 1)} repeats no window")

    def replay_tokens_read(self) -> int:
        """Replay tokens one process reads over the run (windows of seq_len + 1)."""
        tc = self.train
        return math.ceil(self.replay.ratio * tc.steps * tc.micro_batch * tc.grad_accum * (self.data.seq_len + 1))


@dataclass
class RunInfo(Section):
    """[run] of a run directory's config.toml: what the stage recorded about itself."""
    stage: str = ""                     # pretrain | cpt | sft ("" in runs written before it was recorded)
    commit: str = ""
    command: str = ""                   # retypeable, without machine paths
    world_size: int = 1
    device: str = ""
    params: int = 0
    base: str = ""                      # adapter stages: the base as named, its kind, the data's tokenizer
    base_kind: str = ""
    tokenizer: str = ""                 # "same" | "extended"
    trainable_params: int = 0
    vocab_old_vocab: int = 0            # vocabulary extension (tokenizer = "extended")
    vocab_new_vocab: int = 0
    vocab_initialised: int = 0
    vocab_tied: bool = False
    dream_tokens: int = 0               # generated replay: tokens the base wrote, and the seconds it took
    dream_seconds: float = 0.0
    lora_ranks: list = field(default_factory=list)  # plasticity.surprise_rank: "module=rank" for each adapted matrix


STAGE_CONFIGS = {"pretrain": RunConfig, "cpt": CptConfig, "sft": StageConfig}


def config_class(raw: dict):
    """The schema of a config read from a file: by its [run] stage, else a [base] means a stage on a base
    (read as CptConfig, which holds SFT's sections too), else pretraining."""
    stage = raw.get("run", {}).get("stage") if isinstance(raw.get("run"), dict) else None
    if stage in STAGE_CONFIGS:
        return STAGE_CONFIGS[stage]
    return CptConfig if "base" in raw or "lora" in raw else RunConfig


@dataclass
class RunRecord:
    """A run directory's config.toml read back through the schema."""
    config: Config
    run: RunInfo

    @property
    def stage(self) -> str:
        return self.run.stage or ("cpt" if isinstance(self.config, StageConfig) else "pretrain")


def model_config_of(spec, where: str) -> ModelConfig:
    """The ModelConfig in a table read from a model file (minimodel.json, a converted config.json),
    checked like a config's [model] section before a model is built; errors name `where`."""
    if not isinstance(spec, dict):
        raise UserError(f"{where} is a JSON {type(spec).__name__}, not a minimodel config object")
    try:
        section = _section("model", ModelSection(preset=None), spec)
        section.check()
        return section.model_config()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def read_run_config(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.toml: not a minimodel run directory")
    raw = read_toml(path, "restore the run's config.toml or start the run again")
    run = raw.pop("run", {})
    if not isinstance(run, dict):
        raise UserError(f"{path}: [run] must be a table; the run's config is damaged")
    cls = config_class({**raw, "run": run})
    return RunRecord(build_config(raw, cls), _section("run", RunInfo(), run))


def _coerce(section: str, key: str, value: Any, typ) -> Any:
    where = f"{section}.{key}"
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise UserError(f"config key {where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"config key {where} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (ValueError, OverflowError):
            raise UserError(f"config key {where} must be an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise UserError(f"config key {where} must be an integer, got {value!r}")
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise UserError(f"config key {where} must be a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"config key {where} must be a number, got {value!r}") from None
        if not math.isfinite(f):  # nan or inf would reach torch (or a comparison that lets nan through)
            raise UserError(f"config key {where} must be a finite number, got {value!r}")
        return f
    if typ is str:
        if not isinstance(value, str):
            raise UserError(f"config key {where} must be a string, got {value!r}")
        return value
    if typ is list:  # a list of strings (TOML array, or "a,b" on the command line)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"config key {where} must be a list of strings, got {value!r}")
        return value
    return value


def _field_types(dc) -> dict:
    """{field: its plain type}; `int | None` (a [model] override) counts as int."""
    out = {}
    for name, hint in get_type_hints(dc).items():
        args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
        out[name] = args[0] if args and type(None) in getattr(hint, "__args__", ()) else hint
    return out


def _section(section: str, obj, values) -> Any:
    """The section dataclass `obj` (its defaults) updated from a table of values, every key known and typed."""
    if not isinstance(values, dict):
        raise UserError(f"config section [{section}] must be a table, got {values!r}")
    dc = type(obj)
    types = _field_types(dc)
    if section == "model":
        bad = sorted(set(values) - set(types))
        if bad:
            raise UserError(f"unknown config key(s) model.{bad[0]}; valid model keys: {sorted(types)}")
    choices = {f.name: f.metadata.get("choices") for f in fields(dc)}
    for k, v in values.items():
        if k not in types:
            raise UserError(f"unknown config key {section}.{k}; valid keys in [{section}]: {sorted(types)}")
        if isinstance(v, bool) and choices[k] and "true" in choices[k]:  # TOML true/false for a true|false|auto
            v = str(v).lower()
        v = _coerce(section, k, v, types[k])
        if choices[k] and v not in choices[k]:
            raise UserError(f"config key {section}.{k} must be one of {choices[k]}, got {v!r}")
        setattr(obj, k, v)
    return obj


def _parse_override(item: str, cls=RunConfig) -> tuple[str, str, Any]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"bad override {item!r}: write section.key=value, e.g. optim.lr=0.01")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    if _is_string_key(section, key, cls) and not raw.startswith(('"', "'")):
        return section, key, raw  # paths and names stay text, even "2024" or "1e3"
    try:  # TOML literal (numbers, booleans, quoted strings), else a bare string
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def _is_string_key(section: str, key: str, cls=RunConfig) -> bool:
    hints = get_type_hints(cls)
    return section in hints and _field_types(hints[section]).get(key) is str


def build_config(raw: dict, cls=RunConfig):
    """Validate a nested dict (as read from TOML) into a RunConfig (or another stage's `cls`)."""
    if not isinstance(raw, dict):
        raise UserError("config must be a table of sections")
    hints = get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise UserError(f"unknown config section(s) {unknown}; valid sections: {sorted(hints)}")
    cfg = cls()
    for section, values in raw.items():
        _section(section, getattr(cfg, section), values)
    for f in fields(cfg):  # each section's own checks, then those across sections
        getattr(cfg, f.name).check()
    cfg.check()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = (), cls=RunConfig):
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        raw = read_toml(path)
    for item in overrides:
        section, key, value = _parse_override(item, cls)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config section [{section}] must be a table")
        raw[section][key] = value
    return build_config(raw, cls)


def dump_toml(d: dict) -> str:
    """Write a two-level dict of scalars as TOML (no dependency for this small job)."""
    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    parts = []
    for section, values in d.items():
        parts.append(f"[{section}]")
        parts += [f"{k} = {lit(v)}" for k, v in values.items() if v is not None]
        parts.append("")
    return "\n".join(parts)
