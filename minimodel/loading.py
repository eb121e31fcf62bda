"""The one model loader: the stages, eval, export and the report name a model the same way
and get the same object back.

    spec                          resolves to
    runs/core                     a run directory: its final/; without final/, its adapter/ on its base
    runs/core/final               a native export (minimodel.json + model.safetensors): MiniModel
    runs/core/checkpoints/step_N  a pretraining checkpoint (shape from the run's config.toml): MiniModel
    some/hf_dir                   config.json + safetensors: transformers' AutoModelForCausalLM
    model-Q8_0.gguf               converted once into a safetensors directory (minimodel.gguf), then as above
    org/name                      a hub id: a snapshot of its config, weights and tokenizer files
    some/adapter_dir              adapter_config.json: its base + the adapter, with the embeddings and
                                  vocabulary the adapter was trained with (minimodel.lora)

`load(spec)` returns a `CausalLM`: the trainer's calling convention (`model(ids, targets,
reduction=...)`), evaluation's (`logits(ids)`, `tokenizer`, `context`), and where it came from
(`source`). `trust_remote_code` stays off unless the caller asks.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn

from minimodel.errors import UserError, error_gist, hf_load_errors
from minimodel.io import read_json_object
from minimodel.loss import cross_entropy
from minimodel.model import MiniModel, ModelConfig
from minimodel.tokenizer import Tokenizer, is_hub_id, tokenizer_in

NATIVE_CONFIG, WEIGHTS = "minimodel.json", "model.safetensors"


@dataclass
class Source:
    """What a spec resolved to, before any weights are read."""
    spec: str                      # what the user named
    kind: str                      # "native" | "hf" | "checkpoint" | "adapter"
    path: Path                     # the directory holding the weights (the adapter's, for an adapter)
    run_dir: Path | None = None    # the run directory the spec named or lies in
    base: Source | None = None     # an adapter's base


class CausalLM(nn.Module):
    """A native MiniModel or a transformers causal LM (either possibly peft-wrapped), with its
    tokenizer and provenance. `kind` is "native" or "hf"; `net` is the wrapped module."""

    def __init__(self, net: nn.Module, kind: str, config: ModelConfig, tokenizer: Tokenizer | None = None,
                 source: Source | None = None, context: int | None = None):
        super().__init__()
        self.net, self.kind, self.config = net, kind, config
        self.tokenizer, self.source = tokenizer, source
        self.context = context or config.max_seq_len
        self.name = (source.run_dir or Path(source.spec)).name if source else "model"

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        if self.kind == "native":
            return self.net(input_ids, targets, reduction=reduction)
        logits = self.net(input_ids=input_ids, use_cache=False).logits
        if targets is None:
            return logits
        return cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 logits of (B, T) ids (right padding only: a causal model's earlier outputs ignore it)."""
        return self(ids.to(self.device)).float()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def run_dir(self) -> Path | None:
        return self.source.run_dir if self.source else None

    @property
    def prefix_id(self) -> int:
        """What a document is conditioned on, as in the pretraining stream: BOS for a tokenizer that puts
        one before every text (Llama-style); otherwise EOS, which ends the previous document (the kit's
        tokenizers, Qwen; lm-eval's convention too)."""
        tok = self.require_tokenizer()
        if tok.adds_bos or tok.eos_id is None:
            return tok.bos_id
        return tok.eos_id

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            where = self.source.path if self.source else "the model"
            raise UserError(f"{where} has no tokenizer (tokenizer.model or tokenizer.json); "
                            "copy the model's tokenizer beside it")
        return self.tokenizer

    def core(self) -> nn.Module:
        """The model without any peft wrapper (MiniModel or a transformers PreTrainedModel)."""
        net = self.net
        return net.get_base_model() if hasattr(net, "get_base_model") else net

    def refresh_config(self) -> None:
        """Re-read the shape after the core changed (a vocabulary resize, a reload in another dtype)."""
        core = self.core()
        self.config = core.config if isinstance(core, MiniModel) else shape_of_hf_config(core.config)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # each shared tensor once

    def attention_modules(self) -> list:
        core = self.core()
        return core.attention_modules() if isinstance(core, MiniModel) else []


# ---------------------------------------------------------------- resolving a spec

def resolve(spec: str | Path, adapter: str | Path | None = None, gguf_dir: str | Path | None = None,
            revision: str | None = None) -> Source:
    """Where the weights of `spec` are (a hub id is fetched, a .gguf converted); nothing loaded yet.
    `adapter` puts an adapter directory on `spec` as its base."""
    if adapter is not None:
        return Source(str(adapter), "adapter", Path(adapter), base=resolve(spec, gguf_dir=gguf_dir, revision=revision))
    p = Path(spec)
    if p.is_file():
        if p.suffix == ".gguf":
            from minimodel.gguf import gguf_to_hf

            return Source(str(spec), "hf", gguf_to_hf(p, gguf_dir))
        raise UserError(f"{p} is a file but not a .gguf model; give a model directory, a .gguf file or a hub id")
    if p.is_dir():
        return _resolve_dir(p, str(spec), gguf_dir)
    if not is_hub_id(spec):
        raise UserError(f"model not found: {spec} (not a run, model or adapter directory, a .gguf file "
                        "or a hub id like org/name)")
    return Source(str(spec), "hf", hub_snapshot(str(spec), revision))


def local_path_missing(spec) -> str | None:
    """Why an org/name-shaped spec is a local path that is not there, so asking the hub (which retries
    for half a minute offline) would only blame the hub: its parent directory exists here
    (runs/core_104m beside an existing runs/). None when it may well be a hub id."""
    parent = Path(str(spec)).parent
    return f"{parent}/ exists here, so it names a local path, not a hub id" if parent.is_dir() else None


def _resolve_dir(p: Path, spec: str, gguf_dir) -> Source:
    run_dir = p if (p / "config.toml").is_file() else None
    if (p / "final").is_dir():
        src = _resolve_dir(p / "final", spec, gguf_dir)
        src.run_dir = run_dir or src.run_dir
        return src
    if (p / "checkpoint.json").is_file():
        return Source(spec, "checkpoint", p, run_dir=p.parent.parent)
    if (p / NATIVE_CONFIG).is_file():  # its weights are read (and a missing file named) by load()
        return Source(spec, "native", p, run_dir=run_dir)
    if (p / "adapter_config.json").is_file():
        return Source(spec, "adapter", p, run_dir=run_dir, base=resolve(adapter_base(p, run_dir), gguf_dir=gguf_dir))
    if run_dir is not None and (p / "adapter" / "adapter_config.json").is_file():
        return Source(spec, "adapter", p / "adapter", run_dir=run_dir,
                      base=resolve(adapter_base(p / "adapter", run_dir), gguf_dir=gguf_dir))
    if run_dir is not None:
        raise UserError(f"{p} has no final/ (the run did not finish) and no adapter/: nothing to load; "
                        "re-run its stage to finish it")
    if (p / "config.json").is_file():
        return Source(spec, "hf", p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        from minimodel.gguf import gguf_to_hf

        return Source(spec, "hf", gguf_to_hf(ggufs[0], gguf_dir))
    what = f"several .gguf files ({', '.join(g.name for g in ggufs[:3])}): name one" if ggufs else (
        "no final/, minimodel.json, config.json or adapter_config.json")
    raise UserError(f"{p} is not a Hugging Face model directory, a run or an adapter ({what})")


def adapter_base(adapter_dir: Path, run_dir: Path | None = None) -> str:
    """The base an adapter was trained on: minimodel_adapter.json's, else the run's [base] path,
    else peft's base_model_name_or_path."""
    from minimodel.lora import adapter_meta

    meta = adapter_meta(adapter_dir, need_base=True)
    if meta is not None:
        return meta["base"]
    if run_dir is not None:
        from minimodel.config import StageConfig, read_run_config

        cfg = read_run_config(run_dir).config
        if isinstance(cfg, StageConfig) and cfg.base.path:
            return cfg.base.path
    base = read_json_object(adapter_dir / "adapter_config.json", "copy the adapter directory again").get(
        "base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UserError(f"{adapter_dir}: adapter_config.json names no base_model_name_or_path; pass the base model")
    return base


def hub_snapshot(repo_id: str, revision: str | None = None, tokenizer_only: bool = False) -> Path:
    """A local snapshot of a hub model: config, safetensors weights and tokenizer files only (or, with
    tokenizer_only, the tokenizer's files and config.json: what data preparation needs)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if why := local_path_missing(repo_id):
        raise UserError(f"model not found locally: {repo_id} ({why}); train or copy it there first, or name "
                        "an existing directory")
    files = ["*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=files if tokenizer_only else [*files, "*.safetensors"]))
    except RepositoryNotFoundError:
        raise UserError(f"hub model {repo_id} does not exist (or is gated: log in with `hf auth login`)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"hub model {repo_id} is not in the local cache and the hub is offline "
                        "(HF_HUB_OFFLINE=1); download it once online or give a local directory") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot fetch hub model {repo_id}: {error_gist(e)}") from None


# ---------------------------------------------------------------- loading

def load(spec: str | Path | Source, adapter: str | Path | None = None, *, trust_remote_code: bool = False,
         merge: bool = True, native: bool = False, backend: str = "transformers", max_seq_len: int = 2048,
         load_in_4bit: bool = False, dtype: torch.dtype = torch.float32) -> CausalLM:
    """The model `spec` names, on the CPU (callers move it), with its tokenizer.

    merge: an adapter is folded into its base (evaluation, export); False keeps the peft model.
    native: a Llama/Mistral/Qwen3-shaped Hugging Face checkpoint as a MiniModel (same logits).
    backend="unsloth": a Hugging Face base through unsloth's FastLanguageModel (GPU; 4-bit optional)."""
    src = spec if isinstance(spec, Source) else resolve(spec, adapter)
    if src.kind == "adapter":
        return _load_adapter(src, trust_remote_code, merge)
    tokenizer = tokenizer_in(src.path)
    if src.kind == "checkpoint":
        net = _checkpoint_model(src)
    elif src.kind == "native" and backend == "transformers":
        net = MiniModel(read_native_config(src.path / NATIVE_CONFIG))
        from minimodel.checkpoint import load_model_weights

        load_model_weights(net, src.path / WEIGHTS)
    elif native:
        from minimodel.hf_convert import native_from_hf

        net = native_from_hf(src.path)
    elif backend == "unsloth":
        net = _unsloth_model(src, max_seq_len, load_in_4bit, trust_remote_code)
    else:
        net = load_hf_causal_lm(src.path, dtype=dtype, trust_remote_code=trust_remote_code)
    kind = "native" if isinstance(net, MiniModel) else "hf"
    config = net.config if kind == "native" else shape_of_hf_config(net.config)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer.vocab_size, config.vocab_size, str(src.path))
    return CausalLM(net, kind, config, tokenizer, src, _trained_context(src.run_dir, config))


def _load_adapter(src: Source, trust_remote_code: bool, merge: bool) -> CausalLM:
    """Base + adapter through the one path that restores the adapter's vocabulary and embeddings."""
    from minimodel.lora import adapter_meta, restore_adapter

    meta = adapter_meta(src.path)
    lm = load(src.base, trust_remote_code=trust_remote_code or bool(meta and meta.get("trust_remote_code")))
    restore_adapter(lm, src.path, meta)
    if merge:
        try:
            lm.net = lm.net.merge_and_unload()
        except (NotImplementedError, ValueError) as e:  # peft loads some variants it cannot merge
            raise UserError(f"cannot merge the adapter in {src.path} into its base ({error_gist(e)}); "
                            "its adapter_config.json asks for a LoRA variant peft cannot merge") from None
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    lm.tokenizer = tokenizer_in(src.path) or lm.tokenizer
    lm.source = src
    lm.name = (src.run_dir or src.path).name
    lm.context = _trained_context(src.run_dir, lm.config)
    return lm


def _trained_context(run_dir: Path | None, config: ModelConfig) -> int:
    """The sequence length a run trained at (what its evaluation should use), else the model's maximum."""
    if run_dir is None:
        return config.max_seq_len
    from minimodel.config import read_run_config

    return min(read_run_config(run_dir).config.data.seq_len, config.max_seq_len)


def _checkpoint_model(src: Source) -> MiniModel:
    from minimodel.checkpoint import load_model_weights, verify_checkpoint
    from minimodel.config import RunConfig, read_run_config

    cfg = read_run_config(src.run_dir).config
    if not isinstance(cfg, RunConfig):
        raise UserError(f"{src.path} is a checkpoint of an adapter stage (trainable tensors only); "
                        f"load the run's final/ or its adapter/ instead")
    verify_checkpoint(src.path)
    model = MiniModel(cfg.model_config())
    load_model_weights(model, src.path / WEIGHTS)
    return model


def _unsloth_model(src: Source, max_seq_len: int, load_in_4bit: bool, trust_remote_code: bool):
    import os

    try:
        import unsloth  # noqa: F401  (must come before transformers/peft are patched)
        from unsloth import FastLanguageModel
    except (ImportError, NotImplementedError, RuntimeError) as e:
        raise UserError(f"lora.backend=unsloth but unsloth cannot be used here ({error_gist(e)}); "
                        "install it on a GPU machine with pip install 'minimodel[unsloth]', "
                        "or use lora.backend=peft") from None
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(src.path), max_seq_length=max_seq_len, dtype=None, load_in_4bit=load_in_4bit,
        trust_remote_code=trust_remote_code, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    return model


def check_tokenizer_fits(n_tokens: int, vocab_size: int, where: str) -> None:
    """Every token id must have an embedding row (rows beyond the tokenizer are padding)."""
    if n_tokens > vocab_size:
        raise UserError(f"{where}: the tokenizer has {n_tokens} tokens but the model embeds only {vocab_size}; "
                        "use the tokenizer the model was trained with (or resize the embeddings first)")


# ---------------------------------------------------------------- configs and transformers

def model_shape(spec: str | Path) -> ModelConfig:
    """The shape of the model `spec` names, without reading its weights (what the planner needs);
    a hub id costs its config.json only."""
    if is_hub_id(spec):
        import os

        from huggingface_hub import hf_hub_download

        if why := local_path_missing(spec):
            raise UserError(f"base not found locally: {spec} ({why}); make it first (train or copy the base "
                            "there) or point base.path at an existing directory")
        try:
            config = Path(hf_hub_download(str(spec), "config.json"))
        except Exception as e:  # noqa: BLE001  any hub failure (offline, missing, gated) is the line below
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise UserError(f"base not found locally: {spec} (no such directory, and the hub is offline "
                                "(HF_HUB_OFFLINE=1) with no cached copy): point base.path at a local directory, "
                                "or fetch it once online") from None
            raise UserError(f"base {str(spec)!r}: cannot read its config.json from the hub ({type(e).__name__}): "
                            "point base.path at a local directory") from None
        return shape_of_hf_config(SimpleNamespace(**read_json_object(config, "download the model again")))
    src = resolve(spec)
    src = src.base if src.kind == "adapter" else src
    if src.kind == "native":
        return read_native_config(src.path / NATIVE_CONFIG)
    if src.kind == "checkpoint":
        from minimodel.config import read_run_config

        return read_run_config(src.run_dir).config.model_config()
    return shape_of_hf_config(SimpleNamespace(**read_json_object(src.path / "config.json", "copy config.json again")))



def read_native_config(path: Path) -> ModelConfig:
    """The ModelConfig in a minimodel.json, every field type- and range-checked before a model is built
    (a string or a zero there would fail deep inside torch)."""
    from minimodel.config import model_config_of

    return model_config_of(read_json_object(path, "export the model again"), str(path))


def shape_of_hf_config(hf_config) -> ModelConfig:
    """Our ModelConfig for any transformers config (FLOPs, vocabulary size, tying): the shape only."""
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


def load_hf_causal_lm(source: str | Path, what: str = "model", **kw):
    """AutoModelForCausalLM.from_pretrained(source, **kw), refusing a directory whose weights do not
    all load: transformers only *logs* missing, unexpected or misshapen weights and goes on with
    random ones, which would train or evaluate the wrong model silently."""
    from transformers import AutoModelForCausalLM

    if Path(source).is_dir():
        read_json_object(Path(source) / "config.json", "copy the model's config.json again")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(source), output_loading_info=True, **kw)
    except torch.OutOfMemoryError:
        raise
    except hf_load_errors() as e:
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
