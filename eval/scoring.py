"""Log-likelihoods of token windows, batched and deterministic.

A window is (tokens, n_scored): the model reads tokens[:-1] and the last n_scored targets of
tokens[1:] are scored. Everything else (bits per byte, lm-eval requests) is built from windows.
"""
from __future__ import annotations

import torch

from minimodel.models.causal_lm import CausalLM


def doc_windows(ids: list[int], prefix_id: int, ctx: int, stride: int) -> list[tuple[list[int], int]]:
    """Sliding windows over [prefix] + ids so every id is scored exactly once.

    The first window scores its first `ctx` ids; each later window moves by `stride` and
    scores only the ids it adds, so each of those sees at least ctx - stride tokens of context.
    """
    seq = [prefix_id] + list(ids)
    n = len(seq) - 1
    out, done, begin = [], 0, 0
    while done < n:
        end = min(begin + ctx, n)
        out.append((seq[begin:end + 1], end - done))
        done = end
        begin += stride
    return out


@torch.no_grad()
def score_windows(lm: CausalLM, windows: list[tuple[list[int], int]], batch_size: int = 16
                  ) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of the scored targets, all of them the argmax) per window.

    Windows are batched longest first (a fixed order, so results do not depend on the input
    order's chance grouping), right-padded; padding sits after every scored position.
    """
    order = sorted(range(len(windows)), key=lambda i: (-len(windows[i][0]), i))
    results: list[tuple[float, bool] | None] = [None] * len(windows)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(windows[i][0]) - 1 for i in idx)
        inp = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            toks = windows[i][0][:-1]
            inp[row, :len(toks)] = torch.tensor(toks)
        logits = lm.logits(inp).cpu()
        for row, i in enumerate(idx):
            toks, n_scored = windows[i]
            t = len(toks) - 1
            targets = torch.tensor(toks[t - n_scored + 1:])
            lp = torch.log_softmax(logits[row, t - n_scored:t], dim=-1)
            results[i] = (float(lp.gather(-1, targets[:, None]).double().sum()),
                          bool((lp.argmax(-1) == targets).all()))
    return results


def score_docs(lm: CausalLM, docs: list[list[int]], ctx: int, stride: int | None = None,
               batch_size: int = 16, prefix_id: int | None = None) -> list[float]:
    """Total log-likelihood (nats) of each token document, conditioned on the prefix token."""
    stride = stride or max(ctx // 2, 1)
    prefix = lm.prefix_id if prefix_id is None else prefix_id
    windows, owner = [], []
    for d, ids in enumerate(docs):
        for w in doc_windows(ids, prefix, ctx, stride):
            windows.append(w)
            owner.append(d)
    totals = [0.0] * len(docs)
    for d, (ll, _) in zip(owner, score_windows(lm, windows, batch_size)):
        totals[d] += ll
    return totals
