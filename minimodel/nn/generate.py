"""Sampling with a preallocated KV cache (minimodel.nn.model.KVCache): greedy, temperature, top-k and
top-p (nucleus)."""
from __future__ import annotations

import torch

from minimodel.nn.model import KVCache, MiniModel


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) every token outside the top-k and outside the top-p probability mass."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of (B, V) probabilities, by inverse transform: one uniform number per row
    against the cumulative sum. torch.multinomial draws an exponential per vocabulary entry, which was
    ~30% of a small model's decoding step on a CPU; this draws B numbers. A token of probability 0
    is never chosen (the first index whose cumulative mass exceeds the draw)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return picked.clamp(max=probs.shape[-1] - 1).squeeze(-1)


@torch.no_grad()
def generate(model: MiniModel, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue `prompt` (B, T) by up to max_new_tokens; temperature 0 is greedy.
    Rows that produced eos_id keep emitting it. Returns (B, T + new)."""
    was_training = model.training
    model.eval()
    limit = model.config.max_seq_len
    if prompt.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_seq_len={limit}")
    caches = [KVCache(prompt.shape[1] + max_new_tokens) for _ in model.model.layers]
    logits = model(prompt, caches=caches, start_pos=0)[:, -1]
    out, pos = prompt, prompt.shape[1]
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for _ in range(max_new_tokens):
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            nxt = sample(filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1), generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out = torch.cat((out, nxt[:, None]), dim=1)
        if eos_id is not None and bool(done.all()):
            break
        logits = model(nxt[:, None], caches=caches, start_pos=pos)[:, -1]
        pos += 1
    model.train(was_training)
    return out
