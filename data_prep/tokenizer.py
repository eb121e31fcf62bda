"""Train sentencepiece tokenizers that round-trip text exactly.

CLI: python -m data_prep.tokenizer --out tok.model --input en=data/en/*.jsonl:1 --input ko=ko.jsonl:1
"""
from __future__ import annotations

import argparse
import io
import random
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import sentencepiece as spm

from data_prep.clean import clean_text
from data_prep.sources import parse_input_spec, read_files
from data_prep.tok_report import tokenizer_report
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import write_bytes
from minimodel.tokenizers.chat import BOS_ID, CHAT_TOKENS, EOS_ID, PAD_ID, UNK_ID

MODEL_TYPES = ("bpe", "unigram")
MAX_PIECE_CHARS = 4096  # sentencepiece drops training "sentences" over 64 KiB: feed shorter lines


def training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Documents as the trainer's sentences: lines, long lines cut, newlines left to byte fallback."""
    for t in texts:
        for line in t.split("\n"):
            for i in range(0, len(line), MAX_PIECE_CHARS):
                chunk = line[i:i + MAX_PIECE_CHARS]
                if chunk.strip():
                    yield chunk


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int = 4096,
                    model_type: str = "bpe", input_sentence_size: int = 2_000_000,
                    num_threads: int = 2) -> Path:
    """Train a byte-fallback sentencepiece model on `texts` and write it atomically."""
    if model_type not in MODEL_TYPES:
        raise UserError(f"tokenizer type {model_type!r} unknown; use one of {MODEL_TYPES}")
    lines = training_lines(texts)
    first = next(lines, None)
    if first is None:
        raise UserError("empty corpus: no text to train a tokenizer on; check the sources and filters")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_chain(first, lines),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",  # exact round-trip, no NFKC
            remove_extra_whitespaces=False,
            split_digits=True,
            character_coverage=0.9995,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            user_defined_symbols=list(CHAT_TOKENS),
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", str(e))
        if m:
            raise UserError(f"vocab size {m[1]} is more than this corpus supports; "
                            f"use --vocab-size {m[2]} or less, or add text") from None
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m:
            raise UserError(f"vocab size {m[1]} is too small for the {m[2]} characters this corpus needs; "
                            f"use --vocab-size {int(m[2]) + 64} or more") from None
        raise UserError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
    out_path = Path(out_path)
    write_bytes(out_path, buf.getvalue())
    return out_path


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def weighted_texts(texts_by_lang: Mapping[str, Sequence[str]], weights: Mapping[str, float] | None = None,
                   budget_chars: int | None = None, seed: int = 0) -> list[str]:
    """Documents drawn so each language's share of characters follows `weights`.

    A language short of its share is repeated (documents cycled in a seeded order), so a
    small new language can weigh as much as a big one in the vocabulary.
    """
    weights = dict(weights or {lang: 1.0 for lang in texts_by_lang})
    unknown = set(weights) - set(texts_by_lang)
    if unknown:
        raise UserError(f"weights for languages without text: {sorted(unknown)}")
    total_w = sum(w for w in weights.values() if w > 0)
    if total_w <= 0:
        raise UserError("tokenizer sampling weights must include a positive one")
    sizes = {lang: sum(map(len, texts_by_lang[lang])) for lang in weights}
    if budget_chars is None:
        budget_chars = sum(sizes.values())
    rng = random.Random(seed)
    out: list[str] = []
    for lang, w in weights.items():
        docs = [d for d in texts_by_lang[lang] if d]
        if w <= 0 or not docs:
            continue
        target = budget_chars * w / total_w
        order = list(range(len(docs)))
        got = 0
        while got < target:
            rng.shuffle(order)
            for i in order:
                out.append(docs[i])
                got += len(docs[i])
                if got >= target:
                    break
    rng.shuffle(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.tokenizer", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output .model path")
    p.add_argument("--input", action="append", required=True, help="LANG=GLOB[:WEIGHT] (repeatable)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--model-type", choices=MODEL_TYPES, default="bpe")
    p.add_argument("--text-field", default="text")
    p.add_argument("--budget-chars", type=int, default=None, help="characters sampled for training")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    texts, weights = {}, {}
    for spec in a.input:
        lang, pattern, w = parse_input_spec(spec)
        texts.setdefault(lang, []).extend(clean_text(d.text) for d in read_files(pattern, a.text_field))
        weights[lang] = w
    sample = weighted_texts(texts, weights, a.budget_chars, a.seed)
    train_tokenizer(sample, a.out, a.vocab_size, a.model_type)
    import json
    print(json.dumps(tokenizer_report(a.out, texts), ensure_ascii=False))


if __name__ == "__main__":
    cli_entry(main)()
