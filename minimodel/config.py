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


SECTIONS = {f.name: f for f in fields(RunConfig)}
MODEL_KEYS = {f.name for f in fields(ModelConfig)} | {"preset"}
CHOICES = {
    ("optim", "name"): ("muon", "adamw"),
    ("optim", "muon_adjust_lr_fn"): ("original", "match_rms_adamw"),
    ("optim", "schedule"): ("cosine", "wsd", "constant"),
    ("train", "dtype"): ("bf16", "fp32"),
    ("train", "device"): ("auto", "cpu", "cuda"),
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
    return value


def _section_dataclass(section: str):
    return get_type_hints(RunConfig)[section]


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"bad override {item!r}: write section.key=value, e.g. optim.lr=0.01")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    if _is_string_key(section, key) and not raw.startswith(('"', "'")):
        return section, key, raw  # paths and names stay text, even "2024" or "1e3"
    try:  # TOML literal (numbers, booleans, quoted strings), else a bare string
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def _is_string_key(section: str, key: str) -> bool:
    if section == "model":
        return key == "preset"
    if section not in SECTIONS:
        return False
    return get_type_hints(_section_dataclass(section)).get(key) is str


def build_config(raw: dict) -> RunConfig:
    """Validate a nested dict (as read from TOML) into a RunConfig."""
    if not isinstance(raw, dict):
        raise UserError("config must be a table of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown config section(s) {unknown}; valid sections: {sorted(SECTIONS)}")
    cfg = RunConfig()
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise UserError(f"config section [{section}] must be a table, got {values!r}")
        if section == "model":
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
        dc = _section_dataclass(section)
        hints = get_type_hints(dc)
        obj = getattr(cfg, section)
        for k, v in values.items():
            if k not in hints:
                raise UserError(f"unknown config key {section}.{k}; valid keys in [{section}]: {sorted(hints)}")
            v = _coerce(section, k, v, hints[k])
            if (section, k) in CHOICES and v not in CHOICES[(section, k)]:
                raise UserError(f"config key {section}.{k} must be one of {CHOICES[(section, k)]}, got {v!r}")
            setattr(obj, k, v)
    cfg.model_config()  # validate the model shape now, not at the first step
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    positive = [("train", "steps"), ("train", "micro_batch"), ("train", "grad_accum"),
                ("data", "seq_len"), ("train", "eval_batches"), ("train", "keep_last"),
                ("optim", "lr"), ("optim", "adam_lr")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            raise UserError(f"config key {section}.{key} must be > 0")
    if not 0 <= cfg.optim.decay_frac <= 1 or not 0 <= cfg.optim.min_lr_frac <= 1:
        raise UserError("optim.decay_frac and optim.min_lr_frac must lie in [0, 1]")
    if cfg.data.seq_len > cfg.model_config().max_seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len="
                        f"{cfg.model_config().max_seq_len}; raise model.max_seq_len")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
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
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config section [{section}] must be a table")
        raw[section][key] = value
    return build_config(raw)


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
