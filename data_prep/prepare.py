"""Prepare one set: sources -> clean -> held-out split -> tokenizer -> shards + manifest.

python -m data_prep.prepare --out data/mine --files 'corpus/*.jsonl' --vocab-size 8192
python -m data_prep.prepare --out data/ko --hf json --hf-data-files ko.jsonl --tokenizer data/en/tokenizer.model
python -m data_prep.prepare --out data/bible_de --bible de
python -m data_prep.prepare --out data/ko_qwen --files 'ko/*.jsonl' --tokenizer path/to/Qwen3-0.6B
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from data_prep.clean import Cleaner, clean_docs
from data_prep.shards import prepare_from_docs
from data_prep.sources import TXT_UNITS, Doc, read_files, read_hf, take
from data_prep.splits import split_docs
from data_prep.tok_report import tokenizer_report
from data_prep.tokenizer import MODEL_TYPES, train_tokenizer
from minimodel.common.errors import UserError, cli_entry


def collect(args) -> tuple[list[Doc], list[dict]]:
    """All documents named on the command line, and one source record per source."""
    from data_prep import offline
    streams: list[tuple[dict, Iterable[Doc]]] = []
    for pat in args.files or []:
        streams.append(({"kind": "files", "glob": pat, "licence": args.licence},
                        read_files(pat, args.text_field, args.template, args.txt_unit, args.id_field)))
    for ds in args.hf or []:
        streams.append(({"kind": "hf", "id": ds, "config": args.hf_config, "split": args.hf_split,
                         "licence": args.licence},
                        read_hf(ds, args.hf_config, args.hf_split, args.text_field, args.template,
                                args.hf_data_files, args.id_field)))
    for b in args.bible or []:
        streams.append((offline.bible_source(b), offline.bible_docs(b)))
    if args.konlpy:
        streams.append((offline.konlpy_source(), offline.konlpy_docs()))
    if not streams:
        raise UserError("no source given; use --files, --hf, --bible or --konlpy")
    docs, sources, seen = [], [], set()
    for src, stream in streams:
        cleaner = Cleaner(args.min_chars, args.max_chars, not args.no_dedup, seen=seen)
        kept = list(clean_docs(take(stream, args.max_docs), cleaner))
        src = {k: v for k, v in src.items() if v is not None}
        src["clean"] = cleaner.stats.as_dict()
        sources.append(src)
        docs.extend(kept)
    if not docs:
        raise UserError("empty corpus: no documents left after reading and cleaning; "
                        "check the sources and --min-chars/--max-chars")
    return docs, sources


# a stage reads windows of data.seq_len + 1 tokens; its default seq_len is 256
DEFAULT_WINDOW = 257
SPLIT_HINT = ("give more documents or a larger --val-fraction; a .txt file is split into documents "
              "by --txt-unit line|paragraph (--txt-unit file keeps it whole)")


def check_val_split(splits: dict[str, list[Doc]], val_fraction: float) -> None:
    """Refuse a set whose held-out split came out empty: every stage evaluates on it."""
    if val_fraction > 0 and not splits["val"]:
        n = len(splits["train"])
        raise UserError(f"the val split is empty: {n} document{'s' if n != 1 else ''} in all, and a held-out "
                        f"split needs at least two; {SPLIT_HINT}")


def warn_small_val(manifest: dict) -> None:
    val = manifest["splits"].get("val")
    if val and 0 < val["tokens"] < DEFAULT_WINDOW:
        print(f"WARNING: the val split holds {val['tokens']} tokens, fewer than one window at the default "
              f"data.seq_len+1={DEFAULT_WINDOW}: a stage on this set needs data.seq_len <= {val['tokens'] - 1}, "
              f"or {SPLIT_HINT}", file=sys.stderr)


def prepare(args) -> dict:
    docs, sources = collect(args)
    splits = split_docs(docs, args.val_fraction, args.seed)
    check_val_split(splits, args.val_fraction)
    by_split = {s: [d.text for d in ds] for s, ds in splits.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tok = args.tokenizer  # a file, a model directory or a hub id: minimodel.tokenizers.tokenizer.open_tokenizer
        if tok is None:
            tok = train_tokenizer(by_split["train"], Path(tmp) / "tokenizer.model", args.vocab_size,
                                  args.model_type)
        lang = args.lang or "text"
        report = tokenizer_report(tok, {lang: by_split["val"] or by_split["train"][:200]})
        return prepare_from_docs(args.out, tok, by_split, sources, num_proc=args.num_proc,
                                 extra_manifest={"language": args.lang, "val_fraction": args.val_fraction,
                                                 "seed": args.seed,
                                                 "tokenizer_report": report["languages"][lang]})


def add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sources (combine freely)")
    g.add_argument("--files", action="append", help="local file or glob: .txt, .jsonl[.gz], .parquet")
    g.add_argument("--hf", action="append", help="Hugging Face dataset id or builder (json, parquet, text)")
    g.add_argument("--hf-config", default=None)
    g.add_argument("--hf-split", default="train")
    g.add_argument("--hf-data-files", action="append", default=None)
    g.add_argument("--bible", action="append", help="offline demo Bible: a language (en, ko, de...) or bible.db code")
    g.add_argument("--konlpy", action="store_true", help="offline demo: konlpy kolaw + kobill (Korean)")
    g.add_argument("--text-field", default="text")
    g.add_argument("--template", default=None, help='format records, e.g. "{instruction}\\n{output}"')
    g.add_argument("--id-field", default="id")
    g.add_argument("--txt-unit", choices=TXT_UNITS, default="auto",
                   help="what one document is in a .txt file; auto: a paragraph when blank lines separate "
                   "paragraphs, else a line when there are several, else the file")
    g.add_argument("--licence", default=None, help="licence of --files/--hf sources, recorded in the manifest")
    c = p.add_argument_group("cleaning")
    c.add_argument("--min-chars", type=int, default=1)
    c.add_argument("--max-chars", type=int, default=None)
    c.add_argument("--no-dedup", action="store_true")
    c.add_argument("--max-docs", type=int, default=None, help="per source")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    add_source_args(p)
    p.add_argument("--lang", default=None, help="language label for the manifest and report")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="reuse this tokenizer instead of training one: a sentencepiece "
                   ".model, a tokenizer.json, or a model directory (a Hugging Face base's own tokenizer)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--model-type", choices=MODEL_TYPES, default="bpe")
    p.add_argument("--num-proc", type=int, default=2)
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction} must be in [0, 1)")
    m = prepare(args)
    warn_small_val(m)
    print(json.dumps({"out": args.out, **{s: {k: v[k] for k in ("docs", "bytes", "tokens")}
                                          for s, v in m["splits"].items()}}))


if __name__ == "__main__":
    cli_entry(main)()
