"""Between the native model and transformers' Llama/Qwen3 classes, both directions:
`to_hf_config` (export: the transformers config that holds the same model) and
`native_from_hf` (import: a Llama/Mistral/Qwen3-shaped checkpoint as a MiniModel with the same
logits), with `native_config_of_hf` naming what the native model cannot express."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from minimodel.common.errors import UserError, error_gist, hf_load_errors
from minimodel.common.io import read_json_object
from minimodel.config import model_config_of
from minimodel.nn.model import MiniModel, ModelConfig
from minimodel.nn.weights import read_safetensors

WEIGHTS = "model.safetensors"


def to_hf_config(cfg: ModelConfig, torch_dtype: str = "float32"):
    """Qwen3Config when QK-norm is on, LlamaConfig (the Llama2-style baseline) when off."""
    from transformers import (  # transformers and tokenizers take seconds to import: only where used
        LlamaConfig,
        Qwen3Config,
    )

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        initializer_range=cfg.init_std, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        torch_dtype=torch_dtype,
    )
    if cfg.qk_norm:
        return Qwen3Config(**common, use_sliding_window=False)
    return LlamaConfig(**common, mlp_bias=False)


# Architectures whose checkpoints can be Llama/Qwen3-shaped (the native model's two variants).
NATIVE_TYPES = {"llama": False, "mistral": False, "qwen3": True}  # model_type -> QK-norm


def _get(hf, name, default=None):
    return getattr(hf, name, default) if not isinstance(hf, dict) else hf.get(name, default)


def unsupported_features(hf) -> list[str]:
    """What a transformers config (object or config.json dict) uses that ModelConfig cannot express."""
    mtype = _get(hf, "model_type")
    if mtype == "qwen2":  # Qwen2/2.5 always put biases on q/k/v
        return ["attention biases (Qwen2 q/k/v projections)"]
    if mtype not in NATIVE_TYPES:
        return [f"architecture {mtype!r} (the native model is Llama- or Qwen3-shaped)"]
    out = []
    if _get(hf, "attention_bias"):
        out.append("attention biases")
    if _get(hf, "mlp_bias"):
        out.append("MLP biases")
    if _get(hf, "num_experts") or _get(hf, "num_local_experts"):
        out.append("mixture of experts")
    if (_get(hf, "use_sliding_window") or (mtype == "mistral" and _get(hf, "sliding_window"))
            or "sliding_attention" in (_get(hf, "layer_types") or [])):
        out.append(f"sliding-window attention (window {_get(hf, 'sliding_window')})")
    rope = _get(hf, "rope_parameters") or _get(hf, "rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        out.append(f"RoPE scaling ({rope.get('rope_type', rope.get('type'))})")
    if (rope.get("partial_rotary_factor") or _get(hf, "partial_rotary_factor") or 1.0) != 1.0:
        out.append("partial rotary embeddings")
    if _get(hf, "hidden_act", "silu") != "silu":
        out.append(f"activation {_get(hf, 'hidden_act')!r} (SwiGLU with SiLU only)")
    return out


def native_config_of_hf(hf) -> ModelConfig:
    """The ModelConfig of a Llama/Mistral/Qwen3 transformers config; UserError naming what
    the native model cannot express (biases, sliding window, MoE, RoPE scaling, ...)."""
    bad = unsupported_features(hf)
    if bad:
        raise UserError(f"this checkpoint cannot load into the native model: it uses {', '.join(bad)}; "
                        "use it through transformers instead (as a LoRA base)")
    rope = _get(hf, "rope_parameters") or {}
    d, heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
    return ModelConfig(
        vocab_size=_get(hf, "vocab_size"), d_model=d, n_layers=_get(hf, "num_hidden_layers"),
        n_heads=heads, n_kv_heads=_get(hf, "num_key_value_heads") or heads,
        head_dim=_get(hf, "head_dim") or d // heads, ffn_dim=_get(hf, "intermediate_size"),
        qk_norm=NATIVE_TYPES[_get(hf, "model_type")],
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        rope_theta=float(rope.get("rope_theta", _get(hf, "rope_theta", 10000.0))),
        rms_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        max_seq_len=_get(hf, "max_position_embeddings") or 2048,
        init_std=float(_get(hf, "initializer_range", 0.02)),
    )


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All safetensors weights of a HF directory (single file or sharded with an index)."""
    index = model_dir / f"{WEIGHTS}.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "copy the model's files again").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise UserError(f"{index} is damaged: it does not map weight names to files")
        files = sorted(set(weight_map.values()))
    elif (model_dir / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise UserError(f"{model_dir} has no {WEIGHTS} (pytorch_model.bin is not read: it needs unpickling); "
                        "convert it with transformers' save_pretrained(safe_serialization=True)")
    out = {}
    for f in files:
        out.update(read_safetensors(model_dir / f))
    return out


def native_from_hf(model_dir: Path) -> MiniModel:
    """A Llama/Mistral/Qwen3-shaped checkpoint as a MiniModel with identical logits (fp32)."""

    from transformers import AutoConfig  # transformers and tokenizers take seconds to import: only where used


    read_json_object(model_dir / "config.json", "copy the model's config.json again")
    try:
        hf_cfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except hf_load_errors() as e:
        raise UserError(f"{model_dir}/config.json cannot be read by transformers: {error_gist(e)}") from None
    try:
        cfg = native_config_of_hf(hf_cfg)
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as e:
        raise UserError(f"{model_dir}/config.json does not describe a Llama/Qwen3-shaped model ({type(e).__name__}: "
                        f"{str(e)[:120]})") from None
    cfg = model_config_of(asdict(cfg), f"{model_dir}/config.json")  # types and ranges, before building the model
    model = MiniModel(cfg)
    tensors = _read_tensors(model_dir)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    expected = model.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(n for n in set(expected) - set(tensors) if not (cfg.tie_embeddings and n == "lm_head.weight"))
    if unknown or missing:
        raise UserError(f"{model_dir}: weights do not match a {'Qwen3' if cfg.qk_norm else 'Llama'}-shaped model "
                        f"(unexpected {unknown[:3]}, missing {missing[:3]})")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UserError(f"{model_dir}: {name} has shape {tuple(t.shape)}, config.json implies "
                            f"{tuple(expected[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    return model.eval()
