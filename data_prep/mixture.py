"""Mixtures: combine prepared sets by weight into a new prepared set (same format).

The replay mix of continued pretraining: 95% Korean, 5% English:
    python -m data_prep.mixture --out data/mix_ko95 --set data/demo_ko:0.95 --set data/demo_en:0.05

Documents (split at EOS) are drawn from each set so its share of *tokens* follows its
weight; a set short of its share is cycled (repeated), never silently truncated. Without
--train-tokens the total is the largest one that repeats nothing. val is mixed the same
way, and each component's val is also kept as `val_<name>` for per-language metrics.
All sets must share one tokenizer.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from data_prep.shards import check_prepared, prepare_from_docs, read_tokens
from minimodel.common.errors import UserError, cli_entry
from minimodel.tokenizers.chat import EOS_ID
from minimodel.tokenizers.tokenizer import open_tokenizer


def split_at_eos(tokens: np.ndarray, eos_id: int = EOS_ID) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, np.int64)
    return [tokens[s:e] for s, e in zip(starts, ends)]


def draw(docs: list[np.ndarray], target_tokens: int, rng: random.Random) -> list[int]:
    """Indices of documents totalling >= target tokens (with EOS), cycling in seeded orders."""
    if not docs or target_tokens <= 0:
        return []
    order, picked, got = list(range(len(docs))), [], 0
    while got < target_tokens:
        rng.shuffle(order)
        for i in order:
            picked.append(i)
            got += len(docs[i]) + 1
            if got >= target_tokens:
                break
    return picked


def parse_set(spec: str) -> tuple[Path, float]:
    path, sep, w = spec.rpartition(":")
    try:
        weight = float(w)
    except ValueError:
        weight = -1
    if not sep or not path or weight <= 0:
        raise UserError(f"--set {spec!r}: expected DIR:WEIGHT with WEIGHT > 0")
    return Path(path), weight


def mix(out_dir: str | Path, sets: list[tuple[str | Path, float]], train_tokens: int | None = None,
        seed: int = 0, num_proc: int = 1) -> dict:
    """Write a prepared set mixing `sets` [(dir, weight)] by token share; returns its manifest."""
    if not sets:
        raise UserError("a mixture needs at least one --set DIR:WEIGHT")
    manifests = [check_prepared(d, scan=False) for d, _ in sets]
    shas = {m["tokenizer"]["sha256"] for m in manifests}
    if len(shas) != 1:
        names = ", ".join(f"{d}={m['tokenizer']['sha256'][:12]}" for (d, _), m in zip(sets, manifests))
        raise UserError(f"shard/tokenizer mismatch: the sets were tokenised differently ({names}); "
                        "prepare them with one tokenizer")
    weights = np.array([w for _, w in sets], dtype=np.float64)
    weights /= weights.sum()
    tok_path = Path(sets[0][0]) / manifests[0]["tokenizer"]["file"]
    tok, eos = open_tokenizer(tok_path), int(manifests[0]["eos_id"])
    # documents go back to text (BOS and other special tokens dropped) and are encoded again by
    # prepare_from_docs, which frames them as the tokenizer does
    decode = lambda docs: [tok.decode(x.tolist()) for x in docs]  # noqa: E731
    rng = random.Random(seed)
    names = [Path(d).name for d, _ in sets]
    docs_by_split: dict[str, list[str]] = {}
    for split in ("train", "val"):
        comps = [split_at_eos(read_tokens(d, split), eos) if split in m["splits"] else []
                 for (d, _), m in zip(sets, manifests)]
        sizes = np.array([sum(len(x) + 1 for x in c) for c in comps], dtype=np.float64)
        if split == "train" and train_tokens is not None:
            total = train_tokens
        else:  # the most tokens with no set repeated
            total = int(min(s / w for s, w in zip(sizes, weights) if w > 0))
        chosen = []
        for c, w in zip(comps, weights):
            chosen.extend(c[i] for i in draw(c, int(round(total * w)), rng))
        rng.shuffle(chosen)
        docs_by_split[split] = decode(chosen)
    for name, (d, _), m in zip(names, sets, manifests):
        if "val" in m["splits"]:
            docs_by_split[f"val_{name}"] = decode(split_at_eos(read_tokens(d, "val"), eos))
    sources = [{"kind": "mixture", "set": str(d), "weight": float(w), "sources": m.get("sources", [])}
               for (d, _), w, m in zip(sets, weights, manifests)]
    return prepare_from_docs(out_dir, tok_path, docs_by_split, sources, num_proc=num_proc,
                             extra_manifest={"mixture": {n: float(w) for n, w in zip(names, weights)},
                                             "seed": seed})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.mixture", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", required=True, help="DIR:WEIGHT (repeatable)")
    p.add_argument("--train-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=2)
    a = p.parse_args(argv)
    m = mix(a.out, [parse_set(s) for s in a.set], a.train_tokens, a.seed, a.num_proc)
    print(json.dumps({s: v["tokens"] for s, v in m["splits"].items()}))


if __name__ == "__main__":
    cli_entry(main)()
