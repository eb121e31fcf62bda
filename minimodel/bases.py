"""Load the base of an adapter stage: a minimodel run directory or a Hugging Face model.

    runs/core           a minimodel run: final/minimodel.json + final/model.safetensors -> MiniModel
    runs/core/final     the same, named directly
    some/hf_dir         config.json + weights -> AutoModelForCausalLM (trust_remote_code off by default)
    org/name            a hub id, loaded by transformers (needs the network or its cache)

Either way the stage gets a `CausalLM`: one calling convention for the trainer
(`model(ids, targets, reduction=...)`, `.config` as a ModelConfig, `num_params()`).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub.errors import StrictDataclassError

from minimodel.errors import UserError
from minimodel.loss import cross_entropy
from minimodel.model import MiniModel, ModelConfig
from minimodel.jsonfile import read_json_object

TOKENIZER_FILE = "tokenizer.model"


class CausalLM(nn.Module):
    """A native MiniModel or a transformers causal LM (either possibly peft-wrapped) behind the
    trainer's interface. `kind` is "minimodel" or "hf"; `net` is the wrapped module."""

    def __init__(self, net: nn.Module, kind: str, config: ModelConfig):
        super().__init__()
        self.net, self.kind, self.config = net, kind, config

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        if self.kind == "minimodel":
            return self.net(input_ids, targets, reduction=reduction)
        logits = self.net(input_ids=input_ids, use_cache=False).logits
        if targets is None:
            return logits
        return cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)

    def core(self) -> nn.Module:
        """The model without any peft wrapper (MiniModel or a transformers PreTrainedModel)."""
        net = self.net
        return net.get_base_model() if hasattr(net, "get_base_model") else net

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # each shared tensor once

    def attention_modules(self) -> list:
        core = self.core()
        return core.attention_modules() if isinstance(core, MiniModel) else []


@dataclass
class Base:
    lm: CausalLM
    source: str                  # what the user named
    weights_dir: Path | None     # the directory holding the weights (None for a hub id not cached locally)
    tokenizer: Path | None       # the base's sentencepiece model, when it has one


def config_from_hf(hf_config) -> ModelConfig:
    """Our ModelConfig for a transformers config (FLOPs, vocabulary size, tying)."""
    get = lambda *names, default=None: next((getattr(hf_config, n) for n in names
                                             if getattr(hf_config, n, None) is not None), default)
    d = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head", default=1)
    return ModelConfig(
        vocab_size=get("vocab_size"), d_model=d, n_layers=get("num_hidden_layers", "n_layer"),
        n_heads=heads, n_kv_heads=get("num_key_value_heads", default=heads),
        head_dim=get("head_dim", default=d // heads), ffn_dim=get("intermediate_size", default=4 * d),
        qk_norm=hasattr(hf_config, "model_type") and hf_config.model_type.startswith("qwen3"),
        tie_embeddings=bool(get("tie_word_embeddings", default=False)),
        max_seq_len=get("max_position_embeddings", default=2048),
    )


def minimodel_dir(path: Path) -> Path | None:
    """The directory holding minimodel.json for a run dir or its final/, else None."""
    for d in (path / "final", path):
        if (d / "minimodel.json").is_file() and (d / "model.safetensors").is_file():
            return d
    return None


def read_native_config(path: Path) -> ModelConfig:
    """The ModelConfig in a minimodel.json, every field type- and range-checked before a model is built
    (a string or a zero there would fail deep inside torch)."""
    return native_config(read_json_object(path, "export the model again"), str(path))


def native_config(spec, path: str) -> ModelConfig:
    """ModelConfig(**spec) for a spec read from a file (`path` names it in errors)."""
    from dataclasses import fields

    if not isinstance(spec, dict):
        raise UserError(f"{path} is a JSON {type(spec).__name__}, not a minimodel config object")
    known = {f.name: f for f in fields(ModelConfig)}
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise UserError(f"{path}: unknown model key(s) {unknown}; valid keys: {sorted(known)}")
    for key, value in spec.items():
        want = type(getattr(ModelConfig(), key))
        ok = isinstance(value, bool) if want is bool else (
            isinstance(value, int) and not isinstance(value, bool) if want is int else
            isinstance(value, (int, float)) and not isinstance(value, bool) and value == value)
        if not ok:
            raise UserError(f"{path}: {key} is {value!r}, expected {want.__name__}")
        if want is not bool and (value < 0 or (value == 0 and key != "head_dim")):
            raise UserError(f"{path}: {key} is {value!r}, expected a positive number")
    try:
        return ModelConfig(**spec)
    except (ValueError, ZeroDivisionError) as e:
        raise UserError(f"{path} is not a consistent minimodel config ({e})") from None


def load_native(weights_dir: Path) -> MiniModel:
    from minimodel.checkpoint import load_model_weights

    model = MiniModel(read_native_config(weights_dir / "minimodel.json"))
    load_model_weights(model, weights_dir / "model.safetensors")
    return model


def load_base(source: str, trust_remote_code: bool = False) -> Base:
    """Resolve and load a base on the CPU, in fp32 (the stage moves it to its device)."""
    path = Path(source)
    native = minimodel_dir(path) if path.is_dir() else None
    if native is not None:
        model = load_native(native)
        tok = native / TOKENIZER_FILE
        return Base(CausalLM(model, "minimodel", model.config), source, native, tok if tok.is_file() else None)
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(f"base {source} is neither a minimodel run directory (no final/minimodel.json) "
                        "nor a Hugging Face model directory (no config.json)")
    hf = load_hf_causal_lm(source, "base", dtype=torch.float32, trust_remote_code=trust_remote_code)
    weights_dir = path if path.is_dir() else _hub_snapshot(hf)
    tok = weights_dir / TOKENIZER_FILE if weights_dir is not None else None
    return Base(CausalLM(hf, "hf", config_from_hf(hf.config)), source, weights_dir,
                tok if tok is not None and tok.is_file() else None)


def read_hf_config(model_dir: Path) -> dict:
    """config.json of a local Hugging Face directory; UserError unless it is one JSON object
    (transformers itself fails on a bad one with TypeError/AttributeError from deep inside)."""
    return read_json_object(Path(model_dir) / "config.json", "copy the model's config.json again")


# What transformers raises for a config or weights it cannot use: a bad value is a TypeError,
# ValueError or KeyError inside the config class, a weight of another shape a RuntimeError,
# a cut safetensors file an OSError or safetensors' own error (a subclass of Exception only).
# huggingface_hub's StrictDataclassError: a config field of the wrong type (transformers >= 5).
HF_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, ImportError,
                  StrictDataclassError)


def error_gist(e: BaseException) -> str:
    """The gist of a library error in one line (some span two: "field x:" then the reason)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])[:240] if lines else type(e).__name__


def load_hf_causal_lm(source: str | Path, what: str = "model", **kw):
    """AutoModelForCausalLM.from_pretrained(source, **kw), refusing a directory whose weights do not
    all load: transformers only *logs* missing, unexpected or misshapen weights and goes on with
    random ones, which would train or evaluate the wrong model silently."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if Path(source).is_dir():
        read_hf_config(Path(source))
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(source), output_loading_info=True, **kw)
    except torch.OutOfMemoryError:
        raise
    except (*HF_LOAD_ERRORS, SafetensorError) as e:
        raise UserError(f"cannot load {what} {str(source)!r} with transformers: {error_gist(e)}") from None
    # Missing or misshapen weights would be random ones: refuse. Unexpected keys are often
    # harmless leftovers (old buffers such as attn.masked_bias): say so and go on.
    bad = {k: list(info.get(k) or []) for k in ("missing_keys", "mismatched_keys")}
    if any(bad.values()):
        detail = "; ".join(f"{k.split('_')[0]} {v[:3]}{'...' if len(v) > 3 else ''}" for k, v in bad.items() if v)
        raise UserError(f"{what} {str(source)!r}: its weights do not match its config.json ({detail}); "
                        "the directory mixes files of different models")
    extra = list(info.get("unexpected_keys") or [])
    if extra:
        print(f"warning: {what} {str(source)!r} has {len(extra)} weights its model does not use "
              f"({extra[:3]}{'...' if len(extra) > 3 else ''}); ignored", file=sys.stderr)
    return model


def _hub_snapshot(hf) -> Path | None:
    p = getattr(hf, "name_or_path", None) or getattr(hf.config, "_name_or_path", "")
    return Path(p) if p and Path(p).is_dir() else None


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tokenizer_relation(base_tok: Path | None, data_tok: Path, base_source: str) -> str:
    """"same" when the data was tokenised with the base's tokenizer; "extended" when the data's
    tokenizer is the base's with pieces appended (data_prep.vocab_ext); UserError otherwise."""
    if base_tok is None:
        raise UserError(f"base {base_source} has no {TOKENIZER_FILE}: cannot check that the data was tokenised "
                        f"for it; put the sentencepiece model the data was made with beside its weights")
    if not Path(data_tok).is_file():
        raise UserError(f"the data's tokenizer {data_tok} is missing; prepare the data again")
    if sha256(base_tok) == sha256(data_tok):
        return "same"
    from data_prep.tokenizer import load_tokenizer

    b, d = load_tokenizer(base_tok), load_tokenizer(data_tok)
    nb, nd = b.get_piece_size(), d.get_piece_size()
    if nd > nb and all(b.id_to_piece(i) == d.id_to_piece(i) for i in range(nb)):
        return "extended"
    raise UserError(f"the data's tokenizer {data_tok} does not match base {base_source} ({nd} vs {nb} pieces, "
                    "not an extension of it): tokenise the data with the base's tokenizer.model, or extend it "
                    "with python -m data_prep.vocab_ext")
