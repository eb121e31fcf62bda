"""Data for a continual-learning sequence: a base language, then one new language per stage.

    python -m data_prep.continual --out data/continual --langs en,ko,ru,de --tokenizer data/tokenizers/shared.model

Every language comes from the offline Bibles (verse-aligned translations), so every language is scored
on the same content. Chapters present in all languages are held out by hash; half of them form the
`val` split (tuning: what the runs log and what sweeps choose by), the other half `heldout.jsonl`
(reported). Stage k teaches language k with tokenizer T_k: T_{k-1} as it is, or extended with pieces
learned on language k when T_{k-1} covers it badly (its bytes per token below --extend-below x the base
language's, or below 1.25: spelled out byte by byte; data_prep.vocab_ext, for sentencepiece and
tokenizer.json alike; old ids never move).

Writes OUT/plan.json (what the recipe and eval.continual read):
    languages                 the stage order, base language first
    stages[k]                 language, tokenizer, extended, coverage, train (the new language's set),
                              replay (every earlier language mixed at equal token shares, under T_k),
                              prompts (a file of short prefixes in every earlier language, in turn)
    text[lang]                {"val": val.jsonl, "heldout": heldout.jsonl}, the same chapters in every language
and OUT/tokenizers/, OUT/sets/<tokenizer>/<lang>/, OUT/replay/stage<k>/, OUT/prompts/stage<k>.txt,
OUT/text/<lang>/. A re-run with the same inputs writes nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from data_prep import offline
from data_prep.clean import Cleaner, clean_docs
from data_prep.mixture import mix
from data_prep.shards import prepare_from_docs
from data_prep.splits import heldout_units
from data_prep.tok_report import language_stats
from data_prep.vocab_ext import extend_hf_tokenizer, extend_tokenizer
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import read_json_object, write_json, write_text
from minimodel.forgetting.dream import read_prompts as read_prefix_file
from minimodel.tokenizers.tokenizer import copy_tokenizer, open_tokenizer

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts" / "dream"
EXTEND_BELOW = 0.6  # German under the en+ko demo tokenizer: 0.52 of English's bytes/token; Russian 0.27
BYTE_BY_BYTE = 1.25  # bytes per token at which a language is written in (byte-fallback) single bytes


def parse_langs(spec: str) -> list[str]:
    langs = [x.strip() for x in spec.split(",") if x.strip()]
    if len(langs) < 2:
        raise UserError(f"--langs {spec!r}: name the base language and at least one new one, e.g. en,ko,ru,de")
    if len(set(langs)) != len(langs):
        raise UserError(f"--langs {spec!r} names a language twice; each stage teaches a new language")
    for lang in langs:
        if lang not in offline.DEFAULT_BIBLE:
            raise UserError(f"language {lang!r} has no offline text; the offline Bibles hold "
                            f"{', '.join(offline.DEFAULT_BIBLE)} (or prepare your own sets with data_prep.prepare)")
    return langs


def read_prompts(lang: str, prompts_dir: Path) -> list[str]:
    """Short prefixes a person typed in `lang` (never the training text): what the base dreams from."""
    path = prompts_dir / f"{lang}.txt"
    if not path.is_file():
        raise UserError(f"no dream prompts for {lang!r}: write a few short prefixes in that language, one per "
                        f"line, into {path}")
    return read_prefix_file(path)  # the dream sampler's own reader: same rules, same errors


def interleave(lists: list[list[str]]) -> list[str]:
    """One line of each language in turn, as many rounds as the longest list (shorter ones cycle):
    the dream sampler uses prefixes in turn, so each language gets the same share of samples."""
    rounds = max(len(x) for x in lists)
    return [x[i % len(x)] for i in range(rounds) for x in lists]


def load_texts(langs: list[str], val_fraction: float, seed: int, books: list[int] | None) -> tuple[dict, dict]:
    """{lang: {"train", "val", "heldout": [Doc]}} and {lang: source record}; val and heldout hold the same
    chapters (in the same order) in every language."""
    docs, sources = {}, {}
    for lang in langs:
        cleaner = Cleaner(min_chars=1)
        docs[lang] = list(clean_docs(offline.bible_docs(lang, books=books), cleaner))
        sources[lang] = {**offline.bible_source(lang), "clean": cleaner.stats.as_dict()}
    common = set.intersection(*({d.unit for d in ds} for ds in docs.values()))
    ordered = sorted(common, key=lambda k: tuple(map(int, k.split("."))))
    held = heldout_units(ordered, val_fraction, seed)
    if len(held) < 2:
        raise UserError(f"only {len(held)} chapter(s) held out of {len(ordered)} shared by {', '.join(langs)}; "
                        "raise --val-fraction or read more books")
    tune, report = held[0::2], held[1::2]  # alternate chapters: both halves span the whole book range
    out = {}
    for lang, ds in docs.items():
        by_unit = {d.unit: d for d in ds}
        out[lang] = {"train": [d for d in ds if d.unit not in set(held)],
                     "val": [by_unit[u] for u in tune], "heldout": [by_unit[u] for u in report]}
    return out, sources


def text_jsonl(docs) -> str:
    return "".join(json.dumps({"id": d.id, "unit": d.unit, "lang": d.lang, "text": d.text}, ensure_ascii=False)
                   + "\n" for d in docs)


def extend(tokenizer: Path, texts: list[str], out: Path, new_vocab_size: int) -> tuple[Path, dict]:
    """T_{k-1} extended with pieces of the new language, for either tokenizer kind."""
    if open_tokenizer(tokenizer).kind == "sentencepiece":
        out = out.with_suffix(".model")
        return out, extend_tokenizer(tokenizer, texts, out, new_vocab_size)
    return out, extend_hf_tokenizer(tokenizer, texts, out, new_vocab_size)


def first_tokenizer(tokenizer: Path, out: Path) -> Path:
    """A copy of the base's tokenizer under OUT/tokenizers (the plan stays valid if the original moves)."""
    tok = open_tokenizer(tokenizer)
    if tok.kind == "sentencepiece":
        dest = out / "t0.model"
        shutil.copyfile(tok.files()[0], dest)
        return dest
    dest = out / "t0"
    dest.mkdir(exist_ok=True)
    copy_tokenizer(tok, dest)
    return dest


def fingerprint(args: dict, tokenizer: Path) -> str:
    tok = open_tokenizer(tokenizer)
    h = hashlib.sha256(json.dumps(args, sort_keys=True).encode())
    for f in tok.files():
        h.update(f.read_bytes())
    for lang in args["langs"]:
        p = Path(args["prompts_dir"]) / f"{lang}.txt"
        h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()


def run(out: Path, langs: list[str], tokenizer: Path, val_fraction: float = 0.05, seed: int = 0,
        extend_below: float = EXTEND_BELOW, new_vocab_size: int = 2048, books: list[int] | None = None,
        prompts_dir: Path = PROMPTS_DIR, num_proc: int = 2, log=print) -> dict:
    args = {"langs": langs, "val_fraction": val_fraction, "seed": seed, "extend_below": extend_below,
            "new_vocab_size": new_vocab_size, "books": books, "prompts_dir": str(prompts_dir)}
    prompts = {lang: read_prompts(lang, prompts_dir) for lang in langs[:-1]}  # checked before any work
    fp = fingerprint(args, tokenizer)
    plan_file = out / "plan.json"
    if plan_file.is_file() and read_json_object(plan_file, "delete it to prepare again").get("fingerprint") == fp:
        log(f"[continual] {plan_file}: already prepared")
        return read_json_object(plan_file, "delete it to prepare again")
    texts, sources = load_texts(langs, val_fraction, seed, books)
    (out / "tokenizers").mkdir(parents=True, exist_ok=True)
    current = first_tokenizer(tokenizer, out / "tokenizers")
    base_bpt = language_stats(open_tokenizer(current), [d.text for d in texts[langs[0]]["val"]])["bytes_per_token"]
    plan = {"fingerprint": fp, "languages": langs, "args": args, "stages": [], "text": {}}
    for lang in langs:
        d = out / "text" / lang
        d.mkdir(parents=True, exist_ok=True)
        for split in ("val", "heldout"):
            write_text(d / f"{split}.jsonl", text_jsonl(texts[lang][split]))
        plan["text"][lang] = {"val": str(d / "val.jsonl"), "heldout": str(d / "heldout.jsonl")}
    prepared: dict[tuple[str, str], Path] = {}

    def prepared_set(tok: Path, lang: str) -> Path:
        key = (str(tok), lang)
        if key not in prepared:
            dest = out / "sets" / tok.name.removesuffix(".model") / lang
            t = texts[lang]
            heldout = {"file": "heldout.jsonl", "units": "bible chapters (book.chapter)", "count": len(t["heldout"])}
            splits = {"train": [x.text for x in t["train"]], "val": [x.text for x in t["val"]]}
            prepare_from_docs(dest, tok, splits, [sources[lang]], num_proc=num_proc,
                              extra_files={"heldout.jsonl": text_jsonl(t["heldout"])},
                              extra_manifest={"language": lang, "heldout": heldout})
            prepared[key] = dest
            log(f"[continual] {dest}: {lang} under {tok.name}")
        return prepared[key]

    for k, lang in enumerate(langs):
        stage = {"index": k, "language": lang}
        if k > 0:
            stats = language_stats(open_tokenizer(current), [d.text for d in texts[lang]["val"]])
            ratio = stats["bytes_per_token"] / base_bpt
            stage["coverage"] = {"bytes_per_token": stats["bytes_per_token"], "base_bytes_per_token": base_bpt,
                                 "ratio_to_base": round(ratio, 4), "extend_below": extend_below}
            # relative to the base language, or spelled out about a byte per token (a small base vocabulary
            # makes the base language's own bytes/token low too, and hides an uncovered script)
            stage["extended"] = ratio < extend_below or stats["bytes_per_token"] < BYTE_BY_BYTE
            if stage["extended"]:
                current, info = extend(current, [d.text for d in texts[lang]["train"]],
                                       out / "tokenizers" / f"t{k}", new_vocab_size)
                after = language_stats(open_tokenizer(current), [d.text for d in texts[lang]["val"]])
                stage["coverage"].update({"added_pieces": info["added"], "bytes_per_token_after":
                                          after["bytes_per_token"]})
                log(f"[continual] stage {k} ({lang}): {stats['bytes_per_token']} bytes/token is {ratio:.2f} of "
                    f"{langs[0]}'s; +{info['added']} pieces -> {after['bytes_per_token']} bytes/token")
        stage["tokenizer"] = str(current)
        stage["train"] = str(prepared_set(current, lang))
        if k > 0:
            earlier = [prepared_set(current, x) for x in langs[:k]]
            replay = out / "replay" / f"stage{k}"
            mix(replay, [(d, 1.0) for d in earlier], seed=seed, num_proc=num_proc)
            stage["replay"] = str(replay)
            stage["replay_mix"] = {x: round(1 / k, 6) for x in langs[:k]}  # equal token shares
            stage["prompts"] = str(out / "prompts" / f"stage{k}.txt")
            (out / "prompts").mkdir(exist_ok=True)
            write_text(stage["prompts"], "\n".join(interleave([prompts[x] for x in langs[:k]])) + "\n")
        stage["sets"] = {x: str(prepared_set(current, x)) for x in langs[:k + 1]}
        plan["stages"].append(stage)
    write_json(plan_file, plan)  # last: its presence with this fingerprint marks a complete preparation
    log(f"[continual] {plan_file}: {' -> '.join(langs)}")
    return plan


def read_plan(out: str | Path) -> dict:
    p = Path(out) / "plan.json"
    if not p.is_file():
        raise UserError(f"{p} is missing: prepare the sequence with python -m data_prep.continual --out {out} ...")
    return read_json_object(p, "prepare the sequence again with python -m data_prep.continual")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.continual", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--langs", required=True, help="the stage order, base language first: en,ko,ru,de")
    p.add_argument("--tokenizer", required=True, help="the base's tokenizer (.model, tokenizer.json or a directory)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="chapters held out (half val, half heldout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extend-below", type=float, default=EXTEND_BELOW,
                   help="extend the vocabulary for a language whose bytes/token is below this share of the base's")
    p.add_argument("--new-vocab-size", type=int, default=2048, help="tokenizer learned on a new language to extend by")
    p.add_argument("--books", default=None, help="only these Bible books, e.g. 1-5 (small runs and tests)")
    p.add_argument("--prompts-dir", default=str(PROMPTS_DIR), help="<lang>.txt dream prefixes per language")
    p.add_argument("--num-proc", type=int, default=2)
    a = p.parse_args(argv)
    books = None
    if a.books:
        lo, _, hi = a.books.partition("-")
        try:
            books = list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise UserError(f"--books {a.books!r}: expected N or N-M (Bible book numbers 1-66)") from None
    tok = Path(a.tokenizer)
    if not tok.exists():
        raise UserError(f"tokenizer not found: {tok} (the base's tokenizer.model, tokenizer.json or directory)")
    plan = run(Path(a.out), parse_langs(a.langs), tok, a.val_fraction, a.seed, a.extend_below, a.new_vocab_size,
               books, Path(a.prompts_dir), a.num_proc, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps({s["language"]: {"tokenizer": Path(s["tokenizer"]).name, "extended": s.get("extended", False)}
                      for s in plan["stages"]}))


if __name__ == "__main__":
    main()
