"""Run configuration: dataclasses loaded from TOML, `section.key=value` overrides,
validated with messages that name the bad key, dumped resolved into the run dir."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from minimodel.errors import UserError
from minimodel.model import PRESETS, ModelConfig, model_config_from


@dataclass
class OptimConfig:
    name: str = "muon"                  # "muon" (Muon on hidden matrices + AdamW) | "adamw"
    lr: float = 0.01                    # Muon lr (hidden matrices); with name="adamw" the lr of all of them
    adam_lr: float = 0.01               # AdamW lr for embeddings, lm_head and norms under "muon"
    weight_decay: float = 0.1           # decoupled; applied to 2-D matrices only
    muon_momentum: float = 0.95
    muon_adjust_lr_fn: str = "match_rms_adamw"  # torch.optim.Muon: "original" | "match_rms_adamw"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0              # 0 disables
    schedule: str = "cosine"            # "cosine" (warmup + cosine) | "wsd" (warmup-stable-decay) | "constant"
    warmup_steps: int = 20
    decay_frac: float = 0.2             # wsd: share of steps spent decaying
    min_lr_frac: float = 0.1            # final lr as a fraction of the peak


@dataclass
class DataConfig:
    path: str = "data/demo_en"          # a prepared set: manifest.json + shards
    seq_len: int = 256
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class TrainConfig:
    out_dir: str = "runs/core"
    steps: int = 200
    micro_batch: int = 16               # sequences per rank per micro-step
    grad_accum: int = 1
    dtype: str = "bf16"                 # "bf16" autocast | "fp32"
    compile: bool = False
    seed: int = 1337
    device: str = "auto"                # "auto" | "cpu" | "cuda"
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 100
    keep_last: int = 2
    attn_logit_every: int = 100         # 0 disables; QK-norm exists to bound this
    progress: bool = True
    stop_at_step: int = 0               # >0: checkpoint and exit there (time-sliced jobs); resume later
    on_nonfinite: str = "skip"          # NaN/inf loss or gradient: "skip" the update (counted) | "stop"
    max_consecutive_skips: int = 20     # that many skipped steps in a row stop the run anyway
    spike_sigma: float = 6.0            # log a loss this many running std above its running mean; 0: off


@dataclass
class TrackingConfig:
    wandb: bool = False                 # WANDB_MODE (online/offline/disabled) is honoured
    project: str = "minimodel"
    run_name: str = ""


@dataclass
class RunConfig:
    model: dict = field(default_factory=lambda: {"preset": "tiny"})  # preset + ModelConfig keys
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def model_config(self) -> ModelConfig:
        spec = dict(self.model)
        preset = spec.pop("preset", None)
        try:
            return model_config_from(preset, **spec)
        except (ValueError, TypeError) as e:
            raise UserError(f"[model] {e}") from None

    def to_dict(self) -> dict:
        out = {"model": {"preset": self.model.get("preset"), **self.model_config().to_dict()}}
        for f in fields(self):
            if f.name != "model":
                out[f.name] = dataclasses.asdict(getattr(self, f.name))
        if out["model"]["preset"] is None:
            del out["model"]["preset"]
        return out


# Adapter stages (continued pretraining, SFT): the model comes from a base, so there is no
# [model] section; LoRA, the base and (for CPT) replay get their own sections.
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class BaseConfig:
    path: str = ""                      # a minimodel run directory (its final/), a Hugging Face dir, or a hub id
    trust_remote_code: bool = False     # only for hub architectures that need it, when you trust them


@dataclass
class LoraConfig:
    enabled: bool = True                # false: full fine-tuning through the same stage (the reference arm)
    backend: str = "peft"               # "peft" (CPU and GPU) | "unsloth" (GPU; Hugging Face bases)
    rank: int = 128
    alpha: float = 32.0
    rslora: bool = True                 # scale alpha / sqrt(rank) instead of alpha / rank
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    train_embeddings: bool = True       # embed_tokens and lm_head trained fully, at their own lr
    embedding_lr_mult: float = 0.2      # their lr = optim.lr x this (unsloth's recipe: 1e-5 for 5e-5)
    load_in_4bit: bool = False          # unsloth backend: 4-bit (QLoRA) frozen base


@dataclass
class ReplayConfig:
    path: str = ""                      # a prepared set of the original language (same tokenizer as data.path)
    ratio: float = 0.0                  # share of training windows drawn from it: 0, 0.05, 0.25 ...
    val_split: str = "val"


@dataclass
class EvalConfig:
    sets: list = field(default_factory=list)  # more prepared sets whose held-out bpb is logged as val_bpb_<name>


def _stage_optim() -> OptimConfig:
    # The reference recipe (unsloth CPT): AdamW 5e-5, no decay on adapters, re-warmup then decay.
    return OptimConfig(name="adamw", lr=5e-5, adam_lr=5e-5, weight_decay=0.0, warmup_steps=10)


@dataclass
class StageConfig:
    """What a stage on top of a base reads: continued pretraining and SFT."""
    base: BaseConfig = field(default_factory=BaseConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=_stage_optim)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}


@dataclass
class CptConfig(StageConfig):
    replay: ReplayConfig = field(default_factory=ReplayConfig)


SECTIONS = {f.name: f for f in fields(RunConfig)}
MODEL_KEYS = {f.name for f in fields(ModelConfig)} | {"preset"}
CHOICES = {
    ("optim", "name"): ("muon", "adamw"),
    ("optim", "muon_adjust_lr_fn"): ("original", "match_rms_adamw"),
    ("optim", "schedule"): ("cosine", "wsd", "constant"),
    ("train", "dtype"): ("bf16", "fp32"),
    ("train", "on_nonfinite"): ("skip", "stop"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("lora", "backend"): ("peft", "unsloth"),
}


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
        except ValueError:
            raise UserError(f"config key {where} must be an integer, got {value!r}") from None
        if f != int(f):
            raise UserError(f"config key {where} must be an integer, got {value!r}")
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise UserError(f"config key {where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key {where} must be a number, got {value!r}") from None
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


def _section_dataclass(section: str, cls=RunConfig):
    return get_type_hints(cls)[section]


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
    sections = {f.name for f in fields(cls)}
    if section == "model" and "model" in sections:
        return key == "preset"
    if section not in sections:
        return False
    return get_type_hints(_section_dataclass(section, cls)).get(key) is str


def build_config(raw: dict, cls=RunConfig):
    """Validate a nested dict (as read from TOML) into a RunConfig (or another stage's `cls`)."""
    if not isinstance(raw, dict):
        raise UserError("config must be a table of sections")
    sections = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise UserError(f"unknown config section(s) {unknown}; valid sections: {sorted(sections)}")
    cfg = cls()
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise UserError(f"config section [{section}] must be a table, got {values!r}")
        if section == "model" and cls is RunConfig:
            bad = sorted(set(values) - MODEL_KEYS)
            if bad:
                raise UserError(f"unknown config key(s) model.{bad[0]}; valid model keys: {sorted(MODEL_KEYS)}")
            hints = get_type_hints(ModelConfig)
            model = dict(cfg.model)
            for k, v in values.items():
                model[k] = v if k == "preset" else _coerce("model", k, v, hints[k])
            if "preset" in values and model["preset"] not in PRESETS:
                raise UserError(f"unknown model.preset {model['preset']!r}; choose one of {sorted(PRESETS)}")
            cfg.model = model
            continue
        dc = _section_dataclass(section, cls)
        hints = get_type_hints(dc)
        obj = getattr(cfg, section)
        for k, v in values.items():
            if k not in hints:
                raise UserError(f"unknown config key {section}.{k}; valid keys in [{section}]: {sorted(hints)}")
            v = _coerce(section, k, v, hints[k])
            if (section, k) in CHOICES and v not in CHOICES[(section, k)]:
                raise UserError(f"config key {section}.{k} must be one of {CHOICES[(section, k)]}, got {v!r}")
            setattr(obj, k, v)
    if isinstance(cfg, RunConfig):
        cfg.model_config()  # validate the model shape now, not at the first step
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg) -> None:
    positive = [("train", "steps"), ("train", "micro_batch"), ("train", "grad_accum"),
                ("data", "seq_len"), ("train", "eval_batches"), ("train", "keep_last"),
                ("optim", "lr"), ("optim", "adam_lr")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            raise UserError(f"config key {section}.{key} must be > 0")
    if not 0 <= cfg.optim.decay_frac <= 1 or not 0 <= cfg.optim.min_lr_frac <= 1:
        raise UserError("optim.decay_frac and optim.min_lr_frac must lie in [0, 1]")
    if cfg.train.max_consecutive_skips < 0 or not cfg.train.spike_sigma >= 0:
        raise UserError("train.max_consecutive_skips and train.spike_sigma must be >= 0 (spike_sigma=0 turns "
                        "spike logging off)")
    if isinstance(cfg, StageConfig):
        _check_stage(cfg)
        return
    if cfg.data.seq_len > cfg.model_config().max_seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len="
                        f"{cfg.model_config().max_seq_len}; raise model.max_seq_len")


def _check_stage(cfg: StageConfig) -> None:
    if not cfg.base.path:
        raise UserError("config key base.path is empty: name the base (a minimodel run directory, "
                        "a Hugging Face directory or a hub id)")
    lc = cfg.lora
    if lc.rank <= 0:
        raise UserError(f"config key lora.rank must be > 0, got {lc.rank}")
    if lc.alpha <= 0:
        raise UserError(f"config key lora.alpha must be > 0, got {lc.alpha}")
    if not 0 <= lc.dropout < 1:
        raise UserError(f"config key lora.dropout must lie in [0, 1), got {lc.dropout}")
    if lc.embedding_lr_mult <= 0:
        raise UserError(f"config key lora.embedding_lr_mult must be > 0, got {lc.embedding_lr_mult}")
    if lc.enabled and not lc.target_modules:
        raise UserError("config key lora.target_modules is empty; name the linear layers to adapt, e.g. q_proj,v_proj")
    if lc.backend == "unsloth" and not lc.enabled:
        raise UserError("lora.backend=unsloth needs lora.enabled=true; full fine-tuning runs on the peft backend")
    if lc.load_in_4bit and lc.backend != "unsloth":
        raise UserError("lora.load_in_4bit=true needs lora.backend=unsloth (a GPU and bitsandbytes)")
    replay = getattr(cfg, "replay", None)
    if replay is not None:
        if not 0 <= replay.ratio < 1:
            raise UserError(f"config key replay.ratio must lie in [0, 1), got {replay.ratio}")
        if replay.ratio > 0 and not replay.path:
            raise UserError(f"replay.ratio={replay.ratio} but replay.path is empty; name the original-language set")


def parse_stage_args(argv, prog: str, doc: str, configs: str, example: str):
    """`--config FILE` and `section.key=value` overrides: the command line every training stage takes."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help=f"TOML config ({configs})")
    ap.add_argument("overrides", nargs="*", help=f"section.key=value, e.g. {example}")
    return ap.parse_args(argv)


def load_config(path: str | Path | None, overrides: list[str] = (), cls=RunConfig):
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {path} is not valid TOML: {e}") from None
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
