"""Plan an adapter stage (CPT or SFT config with a [base]): the base's shape, the trainable
parameters (LoRA factors + embeddings, or everything under full fine-tuning), memory per GPU,
FLOPs, time and cost. Used by scripts/plan.py when the config has a [base] section.

Memory: the frozen base in fp32 (peft backend, as minimodel.models.loading loads it), 4-bit NF4 or bf16
(unsloth); trainable tensors in fp32 with grads and AdamW's two states; activations and logits
as for pretraining (LoRA's own activations, rank-sized, are left out), except under unsloth's
gradient checkpointing: each layer's bf16 input plus one layer recomputed at a time. FLOPs per token:
2N forward + 2N for activation gradients over the whole model, + 2 per trainable weight for
its gradient (so full fine-tuning is the usual 6N).
"""
from __future__ import annotations

from minimodel.models.loading import model_shape
from minimodel.nn.model import ModelConfig

NF4_BYTES = 4.13 / 8  # 4-bit weights with double-quantised scales


def base_model_config(spec: str) -> ModelConfig:
    """The base's shape: a run directory, a Hugging Face directory, a .gguf file, or a hub id (its
    config.json only, when online), resolved as the stages resolve it."""
    return model_shape(spec)


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
