"""Optimizer groups and learning-rate schedules.

`muon`: torch.optim.Muon on the 2-D hidden matrices (attention and MLP
projections), AdamW on embeddings, lm_head and norms. `adamw`: AdamW on all of
them at one learning rate (the Llama2-style baseline). Weight decay applies to
matrices, never to norm gains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodel.common.optional import import_bitsandbytes
from minimodel.config import OptimConfig


@dataclass
class ParamGroups:
    hidden: list[tuple[str, nn.Parameter]]       # 2-D matrices inside the blocks
    embeddings: list[tuple[str, nn.Parameter]]   # embed_tokens, lm_head (once if tied)
    norms: list[tuple[str, nn.Parameter]]        # 1-D gains


def split_params(model: nn.Module) -> ParamGroups:
    groups = ParamGroups([], [], [])
    for name, p in model.named_parameters():  # tied weights are yielded once
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            groups.norms.append((name, p))
        elif "embed_tokens" in name or "lm_head" in name:
            groups.embeddings.append((name, p))
        else:
            groups.hidden.append((name, p))
    return groups


def build_optimizers(model: nn.Module, cfg: OptimConfig, embed_lr: float | None = None,
                     embed_optim: str = "adamw") -> list[torch.optim.Optimizer]:
    """`embed_lr` (adapter stages) gives embed_tokens/lm_head their own learning rate; None keeps
    pretraining's grouping (adam_lr under muon, lr under adamw). LoRA factors count as hidden matrices.
    `embed_optim="adamw8bit"` (with embed_lr) gives the embeddings an optimizer of their own with 8-bit states."""
    g = split_params(model)
    adam_kw = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    extra = []
    if embed_optim == "adamw8bit" and embed_lr is not None and g.embeddings:
        extra = [adamw_8bit(g.embeddings, embed_lr, cfg.weight_decay, adam_kw)]
        g.embeddings = []
    if cfg.name == "muon":
        optimizers = []
        if g.hidden:  # torch's Muon accepts any 2-D tensor, embeddings included: only hidden matrices go in.
            optimizers.append(torch.optim.Muon(
                [{"params": g.hidden}],
                lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                adjust_lr_fn=cfg.muon_adjust_lr_fn,
            ))
        emb = {"params": g.embeddings, "weight_decay": cfg.weight_decay}
        if embed_lr is not None:
            emb["lr"] = embed_lr
        adam_groups = [x for x in (emb, {"params": g.norms, "weight_decay": 0.0}) if x["params"]]
        if adam_groups:
            optimizers.append(torch.optim.AdamW(adam_groups, lr=cfg.adam_lr, **adam_kw))
    elif cfg.name == "adamw":
        if embed_lr is None:
            groups = [{"params": g.hidden + g.embeddings, "weight_decay": cfg.weight_decay}]
        else:
            groups = [{"params": g.hidden, "weight_decay": cfg.weight_decay},
                      {"params": g.embeddings, "weight_decay": cfg.weight_decay, "lr": embed_lr}]
        groups.append({"params": g.norms, "weight_decay": 0.0})
        optimizers = [torch.optim.AdamW([x for x in groups if x["params"]], lr=cfg.lr, **adam_kw)]
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose 'muon' or 'adamw'")
    optimizers += extra
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    assert_coverage(model, optimizers)
    return optimizers


def adamw_8bit(params: list, lr: float, weight_decay: float, adam_kw: dict) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit: both moments kept as blockwise-quantised uint8 (2 bytes per parameter
    instead of AdamW's 8), the update computed in fp32. It runs on CUDA and, since bitsandbytes 0.48, the CPU."""
    bnb = import_bitsandbytes("lora.embedding_optim=adamw8bit", "lora.embedding_optim=adamw")
    return bnb.optim.AdamW8bit([{"params": params, "weight_decay": weight_decay}], lr=lr, **adam_kw)


def assert_coverage(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every trainable parameter in exactly one group; Muon holds only hidden matrices."""
    seen: dict[int, int] = {}
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                seen[id(p)] = seen.get(id(p), 0) + 1
            if isinstance(opt, torch.optim.Muon):
                for n, p in zip(group["param_names"], group["params"]):
                    assert p.ndim == 2 and "embed_tokens" not in n and "lm_head" not in n, \
                        f"Muon must hold only 2-D hidden matrices, got {n} {tuple(p.shape)}"
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for i, n in trainable.items() if i not in seen]
    doubled = [trainable.get(i, "?") for i, c in seen.items() if c > 1]
    extra = [i for i in seen if i not in trainable]
    assert not missing, f"parameters in no optimizer group: {missing}"
    assert not doubled, f"parameters in more than one optimizer group: {doubled}"
    assert not extra, f"{len(extra)} optimizer parameters are not trainable model parameters"


def lr_multiplier(step: int, total: int, cfg: OptimConfig) -> float:
    """Schedule multiplier in [min_lr_frac, 1] for 0-based `step` of `total`."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_frac
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(total - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_steps = max(int(round(total * cfg.decay_frac)), 1)
        decay_start = total - decay_steps
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return 1.0 - (1 - floor) * progress  # linear decay to the floor
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
