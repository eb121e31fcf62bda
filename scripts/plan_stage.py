"""Plan an adapter stage (CPT or SFT config with a [base]): the base's shape, the trainable
parameters (LoRA factors + embeddings, or everything under full fine-tuning), memory per GPU,
FLOPs, time and cost. Used by scripts/plan.py when the config has a [base] section.

Memory: the frozen base in fp32 (peft backend, as minimodel.bases loads it), 4-bit NF4 or bf16
(unsloth); trainable tensors in fp32 with grads and AdamW's two states; activations and logits
as for pretraining (LoRA's own activations, rank-sized, are left out), except under unsloth's
gradient checkpointing: each layer's bf16 input plus one layer recomputed at a time. FLOPs per token:
2N forward + 2N for activation gradients over the whole model, + 2 per trainable weight for
its gradient (so full fine-tuning is the usual 6N).
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from minimodel.errors import UserError
from minimodel.model import ModelConfig

NF4_BYTES = 4.13 / 8  # 4-bit weights with double-quantised scales


def shape_from_hf(cfg: dict) -> ModelConfig:
    """Only the shape of a transformers config.json (biases, windows etc. do not change the plan)."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    return ModelConfig(vocab_size=cfg["vocab_size"], d_model=d, n_layers=cfg["num_hidden_layers"],
                       n_heads=heads, n_kv_heads=cfg.get("num_key_value_heads") or heads,
                       head_dim=cfg.get("head_dim") or d // heads, ffn_dim=cfg["intermediate_size"],
                       qk_norm=cfg.get("model_type") == "qwen3",
                       tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                       max_seq_len=cfg.get("max_position_embeddings") or 2048)


def base_model_config(spec: str) -> ModelConfig:
    """A minimodel run dir, a Hugging Face dir, or a hub id (its config.json only, when online)."""
    path = Path(spec)
    for d in (path / "final", path):
        if (d / "minimodel.json").is_file():
            names = {f.name for f in fields(ModelConfig)}
            return ModelConfig(**{k: v for k, v in json.loads((d / "minimodel.json").read_text()).items()
                                  if k in names})
        if (d / "config.json").is_file():
            return shape_from_hf(json.loads((d / "config.json").read_text()))
    if not path.exists() and os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            from huggingface_hub import hf_hub_download

            return shape_from_hf(json.loads(Path(hf_hub_download(spec, "config.json")).read_text()))
        except Exception as e:  # noqa: BLE001  any hub failure becomes the one-line message below
            raise UserError(f"base {spec!r}: cannot read its config.json from the hub ({type(e).__name__}); "
                            "download the model directory and point base.path at it") from None
    raise UserError(f"base {spec!r}: no minimodel.json or config.json there (nor in its final/), and the hub "
                    "is off; the planner needs the base's shape: point base.path at a local directory")


def lora_params(m: ModelConfig, rank: int, targets: list[str]) -> int:
    """rank x (in + out) for each targeted projection of every layer."""
    dq, dkv = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    shapes = {"q_proj": (m.d_model, dq), "k_proj": (m.d_model, dkv), "v_proj": (m.d_model, dkv),
              "o_proj": (dq, m.d_model), "gate_proj": (m.d_model, m.ffn_dim), "up_proj": (m.d_model, m.ffn_dim),
              "down_proj": (m.ffn_dim, m.d_model)}
    return m.n_layers * sum(rank * sum(shapes[t]) for t in targets if t in shapes)


def stage_numbers(cfg, m: ModelConfig, n_params: int) -> dict:
    """Trainable and frozen parameter counts and the bytes per frozen parameter."""
    embed = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    # unsloth recomputes each layer in backward (gradient checkpointing); peft here keeps activations
    checkpointing = cfg.lora.backend == "unsloth"
    if not cfg.lora.enabled:
        return {"trainable": n_params, "frozen": 0, "lora": 0, "frozen_bytes_per_param": 0.0,
                "checkpointing": checkpointing}
    lora = lora_params(m, cfg.lora.rank, list(cfg.lora.target_modules))
    trained_embed = embed if cfg.lora.train_embeddings else 0
    if cfg.lora.backend == "unsloth":
        frozen_bytes = NF4_BYTES if cfg.lora.load_in_4bit else 2.0
    else:
        frozen_bytes = 4.0
    return {"trainable": lora + trained_embed, "frozen": n_params - trained_embed, "lora": lora,
            "frozen_bytes_per_param": frozen_bytes, "checkpointing": checkpointing}
