"""Cross-entropy over bf16 logits without materialising fp32 copies of them.

F.cross_entropy under autocast upcasts the whole (tokens x vocab) logits to fp32,
then its backward fills a zero tensor of the same size and casts the gradient back:
on a CPU that is ~25% of a 26M model's step. This Function works in row chunks that
stay in cache, accumulates in fp32, and writes the gradient straight in the logits'
dtype: ~2.5x faster than F.cross_entropy at 2048 x 6400 on 2 cores.
"""
from __future__ import annotations

import torch

CHUNK_ROWS = 128  # 128 x vocab 6400 in fp32 stays in L2; measured fastest on 2 cores


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        picked = torch.empty(n, dtype=torch.float32, device=logits.device)
        valid = targets != ignore_index
        safe = targets.where(valid, 0)
        for s in range(0, n, CHUNK_ROWS):
            chunk = logits[s:s + CHUNK_ROWS].float()
            lse[s:s + CHUNK_ROWS] = torch.logsumexp(chunk, dim=-1)
            picked[s:s + CHUNK_ROWS] = chunk.gather(1, safe[s:s + CHUNK_ROWS, None]).squeeze(1)
        nll = (lse - picked) * valid
        ctx.save_for_backward(logits, safe, valid, lse)
        return nll

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = (grad_nll.float() * valid)
        for s in range(0, logits.shape[0], CHUNK_ROWS):
            e = slice(s, s + CHUNK_ROWS)
            g = torch.exp(logits[e].float() - lse[e, None])  # softmax
            g.scatter_add_(1, safe[e, None], torch.full_like(lse[e, None], -1.0))
            grad[e] = (g * scale[e, None]).to(logits.dtype)
        return grad, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    """Same values as F.cross_entropy(logits.float(), targets) for (N, V) logits and (N,) targets."""
    if logits.device.type != "cpu" or torch.compiler.is_compiling():  # GPU kernels and Inductor fuse it well
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=ignore_index,
                                                reduction="none" if reduction == "mean" else reduction)
        if reduction != "mean":
            return nll
    else:
        nll = _ChunkedCrossEntropy.apply(logits, targets, ignore_index)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":  # an all-masked batch (an SFT prompt longer than seq_len) is 0, not NaN
        return nll.sum() / (targets != ignore_index).sum().clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}")
