"""Capacity that grows with surprise: a stage's LoRA rank budget placed where the new language surprises the
base most, measured before the first step.

The rule, in two lines:
    surprise of an adapted matrix = mean squared gradient norm of the next-token loss on new-language windows
        over the same on replay windows (the languages the base knows); per weight when there is no replay;
    ranks proportional to surprise, within [rank / 4, 4 x rank], at the trainable parameters of uniform rank
        (or that budget x sqrt(new-language loss / known loss), clipped to [1/2, 2], with plasticity.surprise_budget).

Adapters of earlier stages are merged at sleep, so this only decides where a stage's new capacity goes. The
ranks reach peft as its `rank_pattern`, so the adapter directory, merge and reload are unchanged.
"""
from __future__ import annotations

import math
import re

import torch.nn as nn

from minimodel.data.windows import Windows
from minimodel.forgetting.anchor import window_gradients


def adapted_linears(core: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    return {n: m for n, m in core.named_modules()
            if isinstance(m, nn.Linear) and n and n.rsplit(".", 1)[-1] in targets}


def gradient_energy(model: nn.Module, weights: dict[str, nn.Parameter], windows: Windows,
                    n_windows: int) -> tuple[dict[str, float], float]:
    """Mean over `n_windows` evenly spaced windows (one at a time) of ||dL/dW||^2 per matrix, and the mean loss."""
    energy = {n: 0.0 for n in weights}
    loss_sum = 0.0
    for loss, grads, count in window_gradients(model, windows, n_windows, list(weights.values())):
        for n, g in zip(weights, grads):
            energy[n] += float(g.float().pow(2).sum()) / count
        loss_sum += float(loss) / count
    return energy, loss_sum


def measure_surprise(model: nn.Module, core: nn.Module, targets: list[str], new: Windows, known: Windows | None,
                     n_windows: int) -> dict:
    """{"surprise": {module: s}, "shapes": {module: (out, in)}, "loss_new", "loss_known"} on the model as it
    stands (before LoRA)."""
    linears = adapted_linears(core, targets)
    weights = {n: m.weight for n, m in linears.items()}
    flags = {n: w.requires_grad for n, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
    try:
        e_new, loss_new = gradient_energy(model, weights, new, n_windows)
        if known is not None:
            e_known, loss_known = gradient_energy(model, weights, known, n_windows)
            surprise = {n: e_new[n] / max(e_known[n], 1e-30) for n in weights}
        else:
            loss_known = None
            surprise = {n: e_new[n] / weights[n].numel() for n in weights}
    finally:
        for n, w in weights.items():
            w.requires_grad_(flags[n])
    return {"surprise": surprise, "shapes": {n: tuple(w.shape) for n, w in weights.items()},
            "loss_new": loss_new, "loss_known": loss_known}


def budget_scale(loss_new: float, loss_known: float | None) -> float:
    """How much more capacity a language further from what the base knows gets: sqrt of the loss ratio."""
    if loss_known is None or loss_known <= 0:
        return 1.0
    return min(max(math.sqrt(loss_new / loss_known), 0.5), 2.0)


def allocate_ranks(surprise: dict[str, float], shapes: dict[str, tuple[int, int]], rank: int,
                   scale: float = 1.0) -> dict[str, int]:
    """Integer ranks proportional to surprise, each within [rank/4, 4 rank] (and the matrix's own limit),
    whose LoRA parameters sum(r (in + out)) come as close as whole ranks allow to scale x those of `rank`
    everywhere."""
    names = sorted(surprise)
    width = {n: shapes[n][0] + shapes[n][1] for n in names}
    low = {n: max(1, rank // 4) for n in names}
    high = {n: max(low[n], min(4 * rank, *shapes[n])) for n in names}
    budget = scale * rank * sum(width.values())
    mean = sum(surprise.values()) / len(names)
    rel = {n: (surprise[n] / mean if mean > 0 else 1.0) for n in names}

    def ranks_at(c: float) -> dict[str, int]:
        return {n: min(max(int(round(c * rank * rel[n])), low[n]), high[n]) for n in names}

    def cost(r: dict[str, int]) -> int:
        return sum(r[n] * width[n] for n in names)

    lo, hi = 0.0, 1.0
    while cost(ranks_at(hi)) < budget and hi < 1e6:
        hi *= 2
    for _ in range(60):  # the largest multiplier that stays within the budget
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(ranks_at(mid)) <= budget else (lo, mid)
    ranks = ranks_at(lo)
    # whole ranks leave some budget: give it, one rank at a time, to the most surprised matrices that fit
    for n in sorted(names, key=lambda k: -rel[k]):
        while ranks[n] < high[n] and cost(ranks) + width[n] <= budget:
            ranks[n] += 1
    return ranks


def rank_pattern(ranks: dict[str, int]) -> dict[str, int]:
    """peft's rank_pattern: full module names with literal dots (peft matches a key against the whole name,
    or a suffix after a dot), so layers.1 never matches layers.11."""
    return {re.escape(n): r for n, r in ranks.items()}
