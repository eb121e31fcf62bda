"""Make a small multiple-choice cloze task from held-out text.

    python -m eval.cloze data/demo_en/heldout.jsonl --out eval/tasks/data/cloze_en.jsonl
    python -m eval.cloze data/demo_ko/heldout.jsonl --out eval/tasks/data/cloze_ko.jsonl

Each item is a sentence (or a 16-word span of unpunctuated text) of a held-out document,
cut at a word boundary ~60% in: the context
is the beginning, the choices are its true ending and the endings of three other sentences
of the same held-out text (seeded). What it measures: whether the model prefers the
continuation that fits the sentence over fluent text of the same language and style, i.e.
local coherence in that language on text it was not trained on. It is not a knowledge or
reasoning benchmark; chance is 25%.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys

from eval.bpb import read_texts
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import write_text

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(texts: list[str], min_words: int = 8, max_words: int = 40, chunk: int = 16) -> list[list[str]]:
    """Sentences of 8-40 words; text without sentence punctuation (the Korean 1961 Bible has
    none) is cut into consecutive 16-word spans instead."""
    out = []
    for t in texts:
        for s in SENTENCE_END.split(t):
            words = s.split()
            if len(words) > max_words:
                out += [words[i:i + chunk] for i in range(0, len(words) - chunk + 1, chunk)]
            elif len(words) >= min_words:
                out.append(words)
    return out


def make_items(texts: list[str], n: int = 100, n_choices: int = 4, seed: int = 0) -> list[dict]:
    pool = sentences(texts)
    if len(pool) < n_choices:
        raise UserError(f"only {len(pool)} usable sentences (8-40 words); give more held-out text")
    rng = random.Random(seed)
    picks = rng.sample(range(len(pool)), min(n, len(pool)))
    splits = {i: max(3, round(len(pool[i]) * 0.6)) for i in range(len(pool))}
    items = []
    for k, i in enumerate(picks):
        ending = " ".join(pool[i][splits[i]:])
        others = set()
        while len(others) < n_choices - 1:
            j = rng.randrange(len(pool))
            cand = " ".join(pool[j][splits[j]:])
            if j != i and cand != ending:
                others.add(cand)
        choices = sorted(others) + [ending]
        rng.shuffle(choices)
        items.append({"id": k, "context": " ".join(pool[i][:splits[i]]), "choices": choices,
                      "label": choices.index(ending)})
    return items


@cli_entry
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eval.cloze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heldout", help="held-out .jsonl ({\"text\"}) or .txt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    from pathlib import Path

    if not Path(args.heldout).is_file():
        raise UserError(f"held-out file not found: {args.heldout}")
    items = make_items(read_texts(Path(args.heldout))[0], args.n, seed=args.seed)
    write_text(args.out, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    print(f"{len(items)} items -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
