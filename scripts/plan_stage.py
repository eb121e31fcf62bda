"""Plan an adapter stage (CPT or SFT config with a [base]): the base's shape, the trainable
parameters (LoRA factors + embeddings, or everything under full fine-tuning), memory per GPU,
FLOPs, time and cost. Used by scripts/plan.py when the config has a [base] section.

Memory (minimodel.train.memory_plan): the frozen base in base.dtype (auto: the checkpoint's own
torch_dtype) or base.quantize (NF4, int8), 4-bit NF4 or bf16 under unsloth; trainable tensors as fp32
masters with grads and AdamW's two states; activations per layer of a transformers base (LoRA's rank-sized
outputs included) or of the native model, and under checkpointing (train.grad_checkpoint, always under
unsloth) each layer's fp32 input plus one layer recomputed at a time. FLOPs per token:
2N forward + 2N for activation gradients over the whole model, + 2 per trainable weight for
its gradient (so full fine-tuning is the usual 6N).
"""
from __future__ import annotations

from minimodel.models.loading import hf_config_json, model_shape, stored_dtype
from minimodel.nn.model import ModelConfig
from minimodel.train.memory_plan import NF4_BYTES, lora_params, stage_numbers  # noqa: F401  (planner names)


def base_model_config(spec: str) -> ModelConfig:
    """The base's shape: a run directory, a Hugging Face directory, a .gguf file, a hub id (its
    config.json only, when online; the reference bases' shapes ship with the kit), resolved as the
    stages resolve it."""
    return model_shape(spec)


def base_numbers(cfg, m: ModelConfig, n_params: int) -> dict:
    """stage_numbers for cfg.base: its stored dtype (what base.dtype=auto keeps) and its kind."""
    spec = cfg.base.path
    return stage_numbers(cfg, m, n_params, stored_dtype(spec), hf=hf_config_json(spec) is not None)
