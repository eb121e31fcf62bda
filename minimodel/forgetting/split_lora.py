"""A split LoRA: one adapter of rank r whose ranks [0, r/2) learn only from the new language and
[r/2, r) only from the replay windows (their next-token loss and, when set, the distillation towards the base).

The rule, in two lines:
    every forward applies all r ranks (the model computed is exactly a rank-r LoRA);
    on a new-language row the replay half's factors act as constants, on a replay row the new half's do.

How: one peft adapter with rank-sliced gradient masks, not two adapters. A forward hook on lora_A and lora_B
recomputes their output per row with the other half's weights detached. Only the weights are detached, never
the input, so the gradient that flows on to earlier layers is the exact gradient of the loss, and each half's
gradient is exactly its own loss's. One adapter keeps the adapter directory, merge, reload and resume
unchanged. Two peft adapters would need two directories and a merge of both.
The embeddings (and lm_head) stay shared: they learn from both losses, as in a plain LoRA stage.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodel.forgetting.metaplastic import lora_layers


class SplitLora:
    """Installs the hooks on every LoRA layer of `core`; `rows(replay_mask)` routes one forward's gradients.
    Outside `rows(...)` (validation, generation, a plain forward) the hooks change nothing."""

    def __init__(self, core: nn.Module):
        self.replay_rows: torch.Tensor | None = None
        self.handles = []
        for layer in lora_layers(core).values():
            a, b = layer.lora_A["default"], layer.lora_B["default"]
            if a.out_features < 2:
                raise ValueError("a split LoRA needs lora.rank >= 2")
            self.handles += [a.register_forward_hook(self._hook_a), b.register_forward_hook(self._hook_b)]

    @contextlib.contextmanager
    def rows(self, replay_rows: torch.Tensor | None):
        """replay_rows: (batch,) bool, True where the row is a replay window (None: every row is new-language)."""
        self.replay_rows = replay_rows
        try:
            yield
        finally:
            self.replay_rows = None

    def _replay_mask(self, out: torch.Tensor) -> torch.Tensor | None:
        if self.replay_rows is None:
            return None
        # (batch,) -> (batch, 1, ..., 1): broadcast over the positions and the features
        return self.replay_rows.to(out.device).view(-1, *([1] * (out.dim() - 1)))

    def _hook_a(self, module: nn.Linear, inputs, out: torch.Tensor):
        replay = self._replay_mask(out)
        if replay is None or not torch.is_grad_enabled():
            return None
        frozen = F.linear(inputs[0], module.weight.detach())
        half = module.out_features // 2
        in_replay_half = torch.arange(module.out_features, device=out.device) >= half
        own = replay == in_replay_half  # (batch, 1.., rank): the ranks this row may train
        return torch.where(own, out, frozen)

    def _hook_b(self, module: nn.Linear, inputs, out: torch.Tensor):
        replay = self._replay_mask(out)
        if replay is None or not torch.is_grad_enabled():
            return None
        w = module.weight  # (out, rank): columns = ranks
        half = w.shape[1] // 2
        h = inputs[0]
        for_new = F.linear(h, torch.cat([w[:, :half], w[:, half:].detach()], dim=1))
        for_replay = F.linear(h, torch.cat([w[:, :half].detach(), w[:, half:]], dim=1))
        return torch.where(replay, for_replay, for_new)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
