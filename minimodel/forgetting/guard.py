"""The model a CPT run trains when it fights forgetting beyond plain replay: the adapted model plus
self-distillation on replay windows (minimodel.forgetting.distill), an importance anchor towards the base
(minimodel.forgetting.anchor) and/or a split LoRA whose halves learn from their own rows
(minimodel.forgetting.split_lora). All act in training only: validation sees the plain next-token loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minimodel.forgetting.anchor import FisherAnchor
from minimodel.forgetting.distill import AdapterOffTeacher, FrozenCopyTeacher, kl_sum
from minimodel.forgetting.split_lora import SplitLora
from minimodel.models.causal_lm import CausalLM
from minimodel.nn.loss import cross_entropy


class ForgettingGuard(nn.Module):
    """forward(ids, targets, replay_rows=mask): the next-token loss, + distill x KL(base || model) summed
    over the marked rows' tokens (per token of the batch, like the loss), + the anchor's penalty."""

    def __init__(self, lm: CausalLM, distill: float = 0.0, lora: bool = True, anchor: FisherAnchor | None = None,
                 split: SplitLora | None = None):
        super().__init__()
        self.lm, self.distill, self.anchor, self.split = lm, distill, anchor, split
        self.teacher = None
        if distill > 0:
            self.teacher = AdapterOffTeacher(lm) if lora else FrozenCopyTeacher(lm)

    @property
    def config(self):
        return self.lm.config

    def num_params(self) -> int:
        return self.lm.num_params()

    def attention_modules(self) -> list:
        return self.lm.attention_modules()

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                replay_rows: torch.Tensor | None = None):
        if targets is None or not self.training:
            return self.lm(ids, targets, reduction=reduction)
        if self.split is not None:
            with self.split.rows(replay_rows):
                return self._training_loss(ids, targets, reduction, replay_rows)
        return self._training_loss(ids, targets, reduction, replay_rows)

    def _training_loss(self, ids: torch.Tensor, targets: torch.Tensor, reduction: str,
                       replay_rows: torch.Tensor | None) -> torch.Tensor:
        if self.teacher is None or replay_rows is None or not bool(replay_rows.any()):
            loss = self.lm(ids, targets, reduction=reduction)
        else:
            rows = replay_rows.nonzero().squeeze(1)
            teacher = self.teacher(ids[rows])  # first: no graph of the student's exists while weights are swapped
            logits = self.lm(ids)
            valid = targets != -100
            loss = cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
            loss = loss + self.distill * kl_sum(logits[rows], teacher, valid[rows])
            if reduction == "mean":
                loss = loss / valid.sum().clamp(min=1)
        if self.anchor is not None:
            loss = loss + self.anchor.penalty()
        return loss

    def distill_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean KL(base || model) per token over `ids` (a diagnostic, and what the tests check)."""
        teacher = self.teacher(ids)
        logits = self.lm(ids)
        return kl_sum(logits, teacher, torch.ones(ids.shape, dtype=torch.bool, device=ids.device)) / ids.numel()
