"""The one model loader: the stages, eval, export and the report name a model the same way
and get the same object back.

    spec                          resolves to
    runs/core                     a run directory: its final/; without final/, its adapter/ on its base
    runs/core/final               a native export (minimodel.json + model.safetensors): MiniModel
    runs/core/checkpoints/step_N  a pretraining checkpoint (shape from the run's config.toml): MiniModel
    some/hf_dir                   config.json + safetensors: transformers' AutoModelForCausalLM
    model-Q8_0.gguf               converted once into a safetensors directory (minimodel.models.gguf), then as above
    org/name                      a hub id: a snapshot of its config, weights and tokenizer files
    some/adapter_dir              adapter_config.json: its base + the adapter, with the embeddings and
                                  vocabulary the adapter was trained with (minimodel.models.lora)

`load(spec)` returns a `CausalLM`: the trainer's calling convention (`model(ids, targets,
reduction=...)`), evaluation's (`logits(ids)`, `tokenizer`, `context`), and where it came from
(`source`). `trust_remote_code` stays off unless the caller asks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from minimodel.common.errors import UserError, error_gist, hf_load_errors
from minimodel.common.hub import hub_snapshot, is_hub_id, local_path_missing
from minimodel.common.io import read_json_object
from minimodel.config import RunConfig, StageConfig, model_config_of, read_run_config
from minimodel.models.causal_lm import CausalLM, Source, check_tokenizer_fits, shape_of_hf_config
from minimodel.models.gguf import gguf_to_hf
from minimodel.models.hf_convert import native_from_hf
from minimodel.models.lora import adapter_meta, restore_adapter
from minimodel.models.lora import merge as merge_adapter
from minimodel.models.memory import CHECKPOINT_DTYPES, cast_frozen, quantization_config
from minimodel.nn.model import MiniModel, ModelConfig
from minimodel.nn.weights import load_model_weights
from minimodel.tokenizers.tokenizer import tokenizer_in
from minimodel.train.checkpoint import verify_checkpoint

NATIVE_CONFIG, WEIGHTS = "minimodel.json", "model.safetensors"


def resolve(spec: str | Path, adapter: str | Path | None = None, gguf_dir: str | Path | None = None,
            revision: str | None = None) -> Source:
    """Where the weights of `spec` are (a hub id is fetched, a .gguf converted); nothing loaded yet.
    `adapter` puts an adapter directory on `spec` as its base."""
    if adapter is not None:
        return Source(str(adapter), "adapter", Path(adapter), base=resolve(spec, gguf_dir=gguf_dir, revision=revision))
    p = Path(spec)
    if p.is_file():
        if p.suffix == ".gguf":
            return Source(str(spec), "hf", gguf_to_hf(p, gguf_dir))
        raise UserError(f"{p} is a file but not a .gguf model; give a model directory, a .gguf file or a hub id")
    if p.is_dir():
        return _resolve_dir(p, str(spec), gguf_dir)
    if not is_hub_id(spec):
        raise UserError(f"model not found: {spec} (not a run, model or adapter directory, a .gguf file "
                        "or a hub id like org/name)")
    return Source(str(spec), "hf", hub_snapshot(str(spec), revision))


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
        return Source(spec, "hf", gguf_to_hf(ggufs[0], gguf_dir))
    what = f"several .gguf files ({', '.join(g.name for g in ggufs[:3])}): name one" if ggufs else (
        "no final/, minimodel.json, config.json or adapter_config.json")
    raise UserError(f"{p} is not a Hugging Face model directory, a run or an adapter ({what})")


def adapter_base(adapter_dir: Path, run_dir: Path | None = None) -> str:
    """The base an adapter was trained on: minimodel_adapter.json's, else the run's [base] path,
    else peft's base_model_name_or_path."""
    meta = adapter_meta(adapter_dir, need_base=True)
    if meta is not None:
        return meta["base"]
    if run_dir is not None:
        cfg = read_run_config(run_dir).config
        if isinstance(cfg, StageConfig) and cfg.base.path:
            return cfg.base.path
    base = read_json_object(adapter_dir / "adapter_config.json", "copy the adapter directory again").get(
        "base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UserError(f"{adapter_dir}: adapter_config.json names no base_model_name_or_path; pass the base model")
    return base


def load(spec: str | Path | Source, adapter: str | Path | None = None, *, trust_remote_code: bool = False,
         merge: bool = True, native: bool = False, backend: str = "transformers", max_seq_len: int = 2048,
         load_in_4bit: bool = False, dtype: torch.dtype = torch.float32, quantize: str = "none") -> CausalLM:
    """The model `spec` names, on the CPU (callers move it), with its tokenizer.

    merge: an adapter is folded into its base (evaluation, export); False keeps the peft model.
    native: a Llama/Mistral/Qwen3-shaped Hugging Face checkpoint as a MiniModel (same logits).
    backend="unsloth": a Hugging Face base through unsloth's FastLanguageModel (GPU; 4-bit optional).
    dtype: the parameters' dtype (a stage's frozen base: minimodel.models.memory.base_dtype).
    quantize: "nf4" | "int8" loads a Hugging Face base through bitsandbytes (on the current CUDA device, else
    the CPU)."""
    src = spec if isinstance(spec, Source) else resolve(spec, adapter)
    if src.kind == "adapter":
        return _load_adapter(src, trust_remote_code, merge, dtype)
    if quantize != "none" and (native or backend != "transformers" or src.kind != "hf"):
        raise UserError(f"base.quantize={quantize} needs a Hugging Face base loaded by transformers (through "
                        f"bitsandbytes); {src.spec} is a minimodel model: set base.quantize=none")
    tokenizer = tokenizer_in(src.path)
    if src.kind == "checkpoint":
        net = _checkpoint_model(src)
    elif src.kind == "native" and backend == "transformers":
        net = MiniModel(read_native_config(src.path / NATIVE_CONFIG))

        load_model_weights(net, src.path / WEIGHTS)
    elif native:
        net = native_from_hf(src.path)
    elif backend == "unsloth":
        net = _unsloth_model(src, max_seq_len, load_in_4bit, trust_remote_code)
    else:
        quant = {}
        if quantize != "none":
            quant = {"quantization_config": quantization_config(quantize)}
            if torch.cuda.is_available():  # bitsandbytes quantises as the weights land on the GPU
                quant["device_map"] = {"": torch.cuda.current_device()}
        net = load_hf_causal_lm(src.path, dtype=dtype, trust_remote_code=trust_remote_code, **quant)
    if isinstance(net, MiniModel):
        cast_frozen(net, dtype)
    kind = "native" if isinstance(net, MiniModel) else "hf"
    config = net.config if kind == "native" else shape_of_hf_config(net.config)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer.vocab_size, config.vocab_size, str(src.path))
    return CausalLM(net, kind, config, tokenizer, src, _trained_context(src.run_dir, config))


def _load_adapter(src: Source, trust_remote_code: bool, merge: bool,
                  dtype: torch.dtype = torch.float32) -> CausalLM:
    """Base + adapter through the one path that restores the adapter's vocabulary and embeddings; the
    base's weights in `dtype`."""
    meta = adapter_meta(src.path)
    lm = load(src.base, trust_remote_code=trust_remote_code or bool(meta and meta.get("trust_remote_code")),
              dtype=dtype)
    restore_adapter(lm, src.path, meta)
    if merge:
        merge_adapter(lm, src.path)
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

    return min(read_run_config(run_dir).config.data.seq_len, config.max_seq_len)


def _checkpoint_model(src: Source) -> MiniModel:
    cfg = read_run_config(src.run_dir).config
    if not isinstance(cfg, RunConfig):
        raise UserError(f"{src.path} is a checkpoint of an adapter stage (trainable tensors only); "
                        f"load the run's final/ or its adapter/ instead")
    verify_checkpoint(src.path)
    model = MiniModel(cfg.model_config())
    load_model_weights(model, src.path / WEIGHTS)
    return model


def _unsloth_model(src: Source, max_seq_len: int, load_in_4bit: bool, trust_remote_code: bool):

    try:
        import unsloth  # noqa: F401  (must come before transformers/peft are patched)
        from unsloth import FastLanguageModel  # optional: unsloth is a GPU-only extra
    except (ImportError, NotImplementedError, RuntimeError) as e:
        raise UserError(f"lora.backend=unsloth but unsloth cannot be used here ({error_gist(e)}); "
                        "install it on a GPU machine with pip install 'minimodel[unsloth]', "
                        "or use lora.backend=peft") from None
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(src.path), max_seq_length=max_seq_len, dtype=None, load_in_4bit=load_in_4bit,
        trust_remote_code=trust_remote_code, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    return model


REFERENCE_CONFIGS = Path(__file__).resolve().parent / "reference_configs"


def reference_config(spec: str | Path) -> Path | None:
    """The config.json the kit carries for a reference base (a hub id such as mistralai/Mistral-7B-v0.3),
    so the planner works offline for the recipes' bases; None for any other spec."""
    path = REFERENCE_CONFIGS / (str(spec).replace("/", "__") + ".json")
    return path if is_hub_id(spec) and not Path(spec).exists() and path.is_file() else None


def model_shape(spec: str | Path) -> ModelConfig:
    """The shape of the model `spec` names, without reading its weights (what the planner needs);
    a hub id costs its config.json only (none for the reference bases the kit carries)."""
    raw = hf_config_json(spec)
    if raw is not None:
        return shape_of_hf_config(SimpleNamespace(**raw))
    src = resolve(spec)
    src = src.base if src.kind == "adapter" else src
    if src.kind == "native":
        return read_native_config(src.path / NATIVE_CONFIG)
    return read_run_config(src.run_dir).config.model_config()


def stored_dtype(spec: str | Path) -> str:
    """"bf16" or "fp32": what base.dtype=auto keeps the frozen base in (minimodel.models.memory.base_dtype)."""
    raw = hf_config_json(spec)
    if raw is None:
        return "fp32"
    stored = str(raw.get("dtype") or raw.get("torch_dtype") or "float32").removeprefix("torch.")
    return CHECKPOINT_DTYPES.get(stored, "fp32")


def hf_config_json(spec: str | Path) -> dict | None:
    """The config.json of a Hugging Face base (a carried reference, a hub id, a directory), without its
    weights; None for a minimodel model (native export, checkpoint, an adapter on one)."""
    if (ref := reference_config(spec)) is not None:
        return read_json_object(ref, "reinstall minimodel")
    if is_hub_id(spec):

        from httpx import HTTPError  # the hub client's transport: only on paths that may reach the hub
        from huggingface_hub import hf_hub_download  # the hub client: only on paths that may reach the hub
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        if why := local_path_missing(spec):
            raise UserError(f"base not found locally: {spec} ({why}); make it first (train or copy the base "
                            "there) or point base.path at an existing directory")
        try:
            config = Path(hf_hub_download(str(spec), "config.json"))
        # offline with no cached copy; no such (or a gated) repo; no config.json in it; another HTTP answer;
        # a malformed id; the HTTP client's own failures (a proxy, a cut download); the cache directory
        except (LocalEntryNotFoundError, RepositoryNotFoundError, EntryNotFoundError, HfHubHTTPError,
                HFValidationError, HTTPError, OSError) as e:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise UserError(f"base not found locally: {spec} (no such directory, and the hub is offline "
                                "(HF_HUB_OFFLINE=1) with no cached copy): point base.path at a local directory, "
                                "or fetch it once online") from None
            raise UserError(f"base {str(spec)!r}: cannot read its config.json from the hub ({type(e).__name__}): "
                            "point base.path at a local directory") from None
        return read_json_object(config, "download the model again")
    src = resolve(spec)
    src = src.base if src.kind == "adapter" else src
    if src.kind != "hf":
        return None
    return read_json_object(src.path / "config.json", "copy config.json again")


def read_native_config(path: Path) -> ModelConfig:
    """The ModelConfig in a minimodel.json, every field type- and range-checked before a model is built
    (a string or a zero there would fail deep inside torch)."""
    return model_config_of(read_json_object(path, "export the model again"), str(path))


def load_hf_causal_lm(source: str | Path, what: str = "model", **kw):
    """AutoModelForCausalLM.from_pretrained(source, **kw), refusing a directory whose weights do not
    all load: transformers only *logs* missing, unexpected or misshapen weights and goes on with
    random ones, which would train or evaluate the wrong model silently."""
    from transformers import AutoModelForCausalLM  # transformers and tokenizers take seconds to import: only where used

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
