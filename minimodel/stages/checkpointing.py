"""train.grad_checkpoint for every stage: true/false as set, "auto" on when the memory plan
(minimodel.train.memory_plan) says the step would not fit the GPU without it. The plan is made from
the model as built (its real frozen bytes and trainable count), not from the config alone."""
from __future__ import annotations

import torch
import torch.nn as nn

from minimodel.models.causal_lm import CausalLM
from minimodel.models.memory import set_grad_checkpointing
from minimodel.nn.model import MiniModel
from minimodel.train.memory_plan import GIB, count_params, memory_bytes, projection_shapes


def core_of(model: nn.Module) -> nn.Module:
    """The MiniModel or transformers model inside a stage's model (a CausalLM, a ForgettingGuard around one)."""
    model = getattr(model, "lm", model)  # ForgettingGuard keeps the model it guards as .lm
    return model.core() if isinstance(model, CausalLM) else model


def planned_step_bytes(cfg, model: nn.Module, world_size: int) -> int:
    """The plan's peak bytes of one step of `model` without checkpointing."""
    counts = count_params(model.config)
    core = core_of(model)
    lora = getattr(cfg, "lora", None)
    if lora is not None:
        params = list({id(p): p for p in model.parameters()}.values())
        frozen = [p for p in params if not p.requires_grad]
        n_frozen = sum(p.numel() for p in frozen)
        counts.stage = {
            "trainable": sum(p.numel() for p in params if p.requires_grad), "frozen": n_frozen,
            "lora": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
            "frozen_bytes_per_param": sum(p.numel() * p.element_size() for p in frozen) / max(n_frozen, 1),
            "hf": not isinstance(core, MiniModel), "rank": lora.rank if lora.enabled else 0,
            "targets": list(lora.target_modules) if lora.enabled else list(projection_shapes(model.config)),
            "checkpointing": False}
    return memory_bytes(cfg, model.config, counts, cfg.train.micro_batch, world_size, checkpointing=False)["total"]


def apply_grad_checkpoint(cfg, model: nn.Module, device: torch.device, world_size: int = 1) -> str:
    """Switch checkpointing on the model's core as train.grad_checkpoint decides; what was chosen and why
    (the run's first log line)."""
    setting = cfg.train.grad_checkpoint
    if getattr(getattr(cfg, "lora", None), "backend", "peft") == "unsloth":
        return "activation checkpointing: unsloth's own"
    if setting != "auto":
        on, why = setting == "true", f"train.grad_checkpoint={setting}"
    elif device.type != "cuda":
        on, why = False, "train.grad_checkpoint=auto: off on a CPU (the plan models GPU memory)"
    else:
        need = planned_step_bytes(cfg, model, world_size)
        have = torch.cuda.get_device_properties(device).total_memory
        on = need > have
        why = f"train.grad_checkpoint=auto: planned {need / GIB:.1f} GiB without it, the GPU has {have / GIB:.1f}"
    set_grad_checkpointing(core_of(model), on)
    return f"activation checkpointing {'on' if on else 'off'} ({why})"
