"""What a base costs in memory, decided in one place: the dtype its frozen weights keep
(`base.dtype`), a 4-/8-bit frozen base through bitsandbytes (`base.quantize`), fp32 masters for
whatever trains, and activation checkpointing for a native or a transformers model.

Why fp32 masters: an update of lr 1e-5 on a bf16 weight of magnitude ~1 rounds away (bf16 keeps
8 significant bits), so LoRA factors, embeddings and lm_head train in fp32 with fp32 AdamW states,
while the frozen matrices, which only ever feed matmuls under bf16 autocast, stay in 2 bytes.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

from minimodel.common.errors import UserError
from minimodel.common.io import read_json_object
from minimodel.common.optional import import_bitsandbytes
from minimodel.nn.model import MiniModel

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# config.json's torch_dtype -> what the frozen base is kept in (fp16 as bf16: same bytes, the range
# autocast trains in; anything else in fp32)
CHECKPOINT_DTYPES = {"bfloat16": "bf16", "float16": "bf16", "float32": "fp32"}


def base_dtype(setting: str, kind: str, path: Path | None) -> tuple[torch.dtype, str]:
    """The dtype the frozen base is loaded in, and why (the first log line and the plan say it).
    kind: "native" (a minimodel export or checkpoint: written in fp32) or "hf" (config.json's torch_dtype)."""
    if setting != "auto":
        return DTYPES[setting], f"base.dtype={setting}"
    if kind != "hf" or path is None:
        return torch.float32, "base.dtype=auto: a minimodel base is stored in fp32"
    cfg = read_json_object(Path(path) / "config.json", "copy the model's config.json again")
    stored = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"  # transformers 5 writes "dtype"
    chosen = CHECKPOINT_DTYPES.get(str(stored).removeprefix("torch."), "fp32")
    why = f"base.dtype=auto: the checkpoint's torch_dtype is {stored}"
    if chosen == "bf16" and not torch.cuda.is_available():
        why += " (on a CPU bf16 matmuls may be slower than fp32; base.dtype=fp32 trades 2x memory for that)"
    return DTYPES[chosen], why


def cast_frozen(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Parameters (not buffers: RoPE's inverse frequencies stay fp32) of a native model to `dtype`, in
    place, so a tied embedding/lm_head pair stays one Parameter."""
    for p in net.parameters():
        if p.dtype != dtype:
            p.data = p.data.to(dtype)
    return net


def quantization_config(quantize: str):
    """transformers' BitsAndBytesConfig for base.quantize (nf4: QLoRA's 4-bit NormalFloat with double-quantised
    scales and bf16 compute; int8: LLM.int8()), or a one-line error naming the extra that installs bitsandbytes.
    bitsandbytes >= 0.48 runs both on the CPU too (slowly: what the tests use)."""
    import_bitsandbytes(f"base.quantize={quantize}", "base.quantize=none")
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def prepare_quantized(core: nn.Module) -> nn.Module:
    """peft's QLoRA preparation of a bitsandbytes base (norms and embeddings to fp32, input grads on);
    checkpointing is switched separately (grad_checkpointing), like every other base's."""
    import peft

    for module in core.modules():
        # bitsandbytes repacks a 4-bit weight for its CPU inference kernel at the first eval-mode no-grad
        # forward and keeps it so; that kernel has no backward, so every later training step would lose
        # the gradient through the frozen layers (tests/test_quantized_base.py): the stage evaluates first.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return peft.prepare_model_for_kbit_training(core, use_gradient_checkpointing=False)


def fp32_masters(model: nn.Module) -> int:
    """Every trainable floating-point tensor to fp32, in place (a tied pair stays one Parameter); how many
    parameters moved."""
    moved = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            moved += p.numel()
    return moved


def dtype_census(model: nn.Module) -> dict[str, dict[str, int]]:
    """{"trainable": {"float32": n}, "frozen": {"bfloat16": n, "uint8": n}}: parameters by dtype (tied once)."""
    out = {"trainable": Counter(), "frozen": Counter()}
    for p in model.parameters():
        out["trainable" if p.requires_grad else "frozen"][str(p.dtype).removeprefix("torch.")] += p.numel()
    return {k: dict(v) for k, v in out.items()}


def set_grad_checkpointing(core: nn.Module, on: bool) -> None:
    """Per-block activation checkpointing: MiniModel's own switch, or transformers' (non-reentrant, so
    frozen inputs need no grad; the input-grad hook is added anyway, as peft's QLoRA recipe does, for a
    model whose embeddings are frozen)."""
    if isinstance(core, MiniModel):
        core.grad_checkpoint = on
        return
    if not getattr(core, "supports_gradient_checkpointing", False):
        if on:
            raise UserError(f"{type(core).__name__} does not support gradient checkpointing in transformers; "
                            "set train.grad_checkpoint=false")
        return
    if on:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        core.enable_input_require_grads()
    else:
        core.gradient_checkpointing_disable()
