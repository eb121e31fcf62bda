"""Self-distillation on replay windows: besides the sampled next token, the adapted model is pulled
towards the base's whole next-token distribution there (loss += weight x KL(base || model); the
wrapper that adds it is minimodel.forgetting.guard).

The base's logits come from the network being trained, not from a second model, when the run is a
LoRA run: peft's `disable_adapter()` turns the LoRA factors off, and the embeddings (trained in place,
see lora.py) are swapped for a frozen snapshot of the base's for that forward (vocab x d_model: the
only extra memory). Full fine-tuning has no such switch: it keeps a frozen copy of the base (one more
model's weights in memory, in the base's dtype).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from minimodel.models.causal_lm import CausalLM
from minimodel.models.lora import embedding_weights

KL_CHUNK_ROWS = 1024  # token rows per fp32 softmax pair: bounds the extra memory on large vocabularies


class AdapterOffTeacher(nn.Module):
    """The base's logits from a LoRA-wrapped model: adapter disabled, original embeddings swapped in."""

    def __init__(self, lm: CausalLM):
        super().__init__()
        self.lm = [lm]  # a list: not a submodule, so its parameters are not counted twice
        self.names = list(embedding_weights(lm.core()))
        for i, p in enumerate(embedding_weights(lm.core()).values()):  # non-persistent: moved by .to(), never saved
            self.register_buffer(f"frozen_{i}", p.detach().clone(), persistent=False)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lm = self.lm[0]
        live = list(embedding_weights(lm.core()).values())
        trained = [p.data for p in live]
        was_training = lm.training
        lm.eval()
        try:
            for i, p in enumerate(live):
                p.data = getattr(self, f"frozen_{i}")
            with lm.net.disable_adapter():
                return lm(ids)
        finally:
            for p, d in zip(live, trained):
                p.data = d
            lm.train(was_training)


class FrozenCopyTeacher(nn.Module):
    """A frozen copy of the base, for full fine-tuning (costs one more model's weights)."""

    def __init__(self, lm: CausalLM):
        super().__init__()
        self.copy = copy.deepcopy(lm)
        self.copy.requires_grad_(False)
        self.copy.eval()

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.copy(ids)


def kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum over valid positions of KL(teacher || student), each over the vocabulary, in fp32."""
    s, t, v = student_logits.flatten(0, -2), teacher_logits.flatten(0, -2), valid.flatten()
    total = student_logits.new_zeros((), dtype=torch.float32)
    for a in range(0, s.shape[0], KL_CHUNK_ROWS):
        b = slice(a, a + KL_CHUNK_ROWS)
        log_p = torch.log_softmax(t[b].float(), -1)
        log_q = torch.log_softmax(s[b].float(), -1)
        total = total + ((log_p.exp() * (log_p - log_q)).sum(-1) * v[b]).sum()
    return total
