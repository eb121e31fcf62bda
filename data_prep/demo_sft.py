"""An offline bilingual instruction set for the demo, made from verse-aligned Bibles.

    python -m data_prep.demo_sft --data data --out data/sft_demo [--examples 3000]
    python -m data_prep.demo_sft --data data --tokenizer path/to/hf_base --out data/sft_demo_base

No SFT corpus installs from a package registry, but the aligned English (WEB) and Korean
(1961) verses give real instructions with checkable answers: translate a verse either
way, or write the verse that follows, asked half in Korean and half in English. Chapters
held out by `data_prep.demo` (its heldout.jsonl) are never used, so held-out bits per
byte stays clean. Needs `python -m data_prep.demo --out DATA` first (tokenizer + units).
"""
from __future__ import annotations

import argparse
import json
import random
import sqlite3
from pathlib import Path

from data_prep import offline
from data_prep.sft import prepare_sft
from minimodel.common.errors import UserError, cli_entry

TASKS = (  # (instruction language, template, source language, answer language, answer is next verse)
    ("ko", "다음 영어 문장을 한국어로 옮기세요.\n{text}", "en", "ko", False),
    ("en", "Translate this Korean verse into English.\n{text}", "ko", "en", False),
    ("ko", "다음 구절에 이어지는 구절을 쓰세요.\n{text}", "ko", "ko", True),
    ("en", "Write the verse that follows this one.\n{text}", "en", "en", True),
)


def aligned_verses(db: Path, held_units: set[str]) -> list[dict[str, str]]:
    """[{"en": ..., "ko": ..., "unit": "book.chapter"}] in canonical order, held-out chapters removed."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = {code: {(b, c, v): t.strip() for b, c, v, t in con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName=?", (code,))}
            for code in (offline.bible_code("en"), offline.bible_code("ko"))}
    finally:
        con.close()
    en, ko = rows.values()
    keys = sorted(k for k in en.keys() & ko.keys() if en[k] and ko[k] and f"{k[0]}.{k[1]}" not in held_units)
    return [{"en": en[k], "ko": ko[k], "unit": f"{k[0]}.{k[1]}", "key": k} for k in keys]


def build_records(verses: list[dict], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    index = {v["key"]: i for i, v in enumerate(verses)}
    out = []
    for i in rng.sample(range(len(verses)), min(n, len(verses))):
        v = verses[i]
        lang, template, src, dst, follows = TASKS[len(out) % len(TASKS)]
        if follows:
            b, c, num = v["key"]
            j = index.get((b, c, num + 1))
            if j is None:  # last verse of a chapter: translate instead
                lang, template, src, dst, follows = TASKS[(len(out) + 2) % len(TASKS)]
            else:
                answer = verses[j][dst]
        if not follows:
            answer = v[dst]
        out.append({"id": f"{v['unit']}.{v['key'][2]}.{len(out) % len(TASKS)}", "lang": lang,
                    "messages": [{"role": "user", "content": template.format(text=v[src])},
                                 {"role": "assistant", "content": answer}]})
    return out


def held_units_of(data: Path) -> set[str]:
    path = data / "demo_ko" / "heldout.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: run `python -m data_prep.demo --out {data}` first")
    return {json.loads(line)["unit"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.demo_sft", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data", help="the demo's output directory")
    p.add_argument("--out", default=None, help="default: DATA/sft_demo")
    p.add_argument("--examples", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="default: the demo's DATA/tokenizers/shared.model; a Hugging "
                   "Face base's directory or tokenizer.json makes the set for that base (its own chat template)")
    a = p.parse_args(argv)
    data = Path(a.data)
    out = Path(a.out) if a.out else data / "sft_demo"
    tokenizer = Path(a.tokenizer) if a.tokenizer else data / "tokenizers" / "shared.model"
    if not tokenizer.exists():
        raise UserError(f"{tokenizer} not found: run `python -m data_prep.demo --out {data}` first")
    verses = aligned_verses(offline.bible_db(), held_units_of(data))
    recs = build_records(verses, a.examples, a.seed)
    sources = [{"kind": "bible-aligned-instructions", **offline.bible_source("en")},
               {"kind": "bible-aligned-instructions", **offline.bible_source("ko")}]
    m = prepare_sft(out, tokenizer, ((f"verse {r['id']}", r) for r in recs), val_fraction=0.05,
                    seed=a.seed, sources=sources)
    print(json.dumps({s: {k: v[k] for k in ("examples", "tokens", "loss_tokens")} for s, v in m["splits"].items()}))


if __name__ == "__main__":
    cli_entry(main)()
