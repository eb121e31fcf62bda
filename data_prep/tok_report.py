"""Tokenizer report: bytes/token, tokens/char and exact round-trip per language.

CLI: python -m data_prep.tok_report TOKENIZER --input en=GLOB --input ko=GLOB
(TOKENIZER: a sentencepiece .model, a tokenizer.json, or a model directory)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Mapping, Sequence

from data_prep.clean import clean_text
from data_prep.sources import parse_input_spec, read_files
from minimodel.common.errors import cli_entry
from minimodel.tokenizers.tokenizer import Tokenizer, open_tokenizer


def language_stats(tok: Tokenizer, texts: Sequence[str]) -> dict:
    texts = [t for t in texts if t]
    ids = [tok.encode(t) for t in texts]
    n_tokens = sum(map(len, ids))
    n_chars = sum(map(len, texts))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    bad = [i for i, (t, d) in enumerate(zip(texts, ids)) if tok.decode(d) != t]
    out = {
        "docs": len(texts), "chars": n_chars, "bytes": n_bytes, "tokens": n_tokens,
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
        "tokens_per_char": round(n_tokens / max(n_chars, 1), 4),
        "roundtrip_ok": not bad, "roundtrip_failures": len(bad),
    }
    if tok.kind == "sentencepiece":  # how often text fell back to single bytes
        byte_pieces = sum(1 for doc in ids for i in doc if tok.sp.is_byte(i))
        out["byte_fallback_frac"] = round(byte_pieces / max(n_tokens, 1), 4)
    return out


def tokenizer_report(tokenizer, texts_by_lang: Mapping[str, Sequence[str]]) -> dict:
    """Per-language stats for a tokenizer: a path (sentencepiece .model, tokenizer.json, model
    directory) or an opened minimodel.tokenizers.tokenizer tokenizer."""
    tok = open_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    rep = {"vocab_size": tok.vocab_size, "kind": tok.kind,
           "languages": {lang: language_stats(tok, t) for lang, t in texts_by_lang.items()}}
    if isinstance(tokenizer, (str, Path)):
        rep["tokenizer"] = str(tokenizer)
        rep["sha256"] = tok.sha256
    rep["roundtrip_ok"] = all(s["roundtrip_ok"] for s in rep["languages"].values())
    return rep


def texts_by_language(specs: list[str], text_field: str) -> dict[str, list[str]]:
    """{language: cleaned texts} for LANG=GLOB specs (the --input of tok_report and vocab_ext)."""
    out = {}
    for spec in specs:
        lang, pattern, _ = parse_input_spec(spec)
        out[lang] = [clean_text(d.text) for d in read_files(pattern, text_field)]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.tok_report", description=__doc__.splitlines()[0])
    p.add_argument("tokenizer")
    p.add_argument("--input", action="append", required=True, help="LANG=GLOB (repeatable)")
    p.add_argument("--text-field", default="text")
    a = p.parse_args(argv)
    print(json.dumps(tokenizer_report(a.tokenizer, texts_by_language(a.input, a.text_field)), ensure_ascii=False,
                     indent=2))


if __name__ == "__main__":
    cli_entry(main)()
