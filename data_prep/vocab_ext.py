"""Vocabulary extension: add pieces learned on a new language to an existing tokenizer: the kit's
sentencepiece models, or a Hugging Face base's BPE tokenizer.json (byte-level or sentencepiece-style).

Existing ids never move (new pieces are appended), so a model trained with the base
tokenizer keeps its embeddings; rows for the new ids are added on the model side.

CLI: python -m data_prep.vocab_ext --base en.model --input ko=ko/*.jsonl --new-vocab-size 8000 --out enko.model
     python -m data_prep.vocab_ext --base path/to/hf_base --input ko=ko/*.jsonl --out tok/base_ko   (a directory)
"""
from __future__ import annotations

import argparse
import json
import struct
import tempfile
from pathlib import Path
from typing import Iterable

from data_prep.tokenizer import train_tokenizer
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import atomic_dir, write_bytes, write_text
from minimodel.tokenizers.chat import load_tokenizer
from minimodel.tokenizers.tokenizer import HFTokenizer, copy_tokenizer, open_tokenizer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _piece_record(piece: str, score: float) -> bytes:
    """ModelProto.pieces entry (field 1): SentencePiece{piece=1, score=2}; type defaults to NORMAL."""
    raw = piece.encode("utf-8")
    msg = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score)
    return b"\x0a" + _varint(len(msg)) + msg


def _is_normal(sp, i: int) -> bool:
    return not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))


def new_pieces(base_sp, new_sp, max_new: int | None = None) -> list[tuple[str, float]]:
    """Normal pieces of `new_sp` absent from `base_sp`, in the new model's order."""
    have = {base_sp.id_to_piece(i) for i in range(base_sp.get_piece_size())}
    out = [(new_sp.id_to_piece(i), new_sp.get_score(i)) for i in range(new_sp.get_piece_size())
           if _is_normal(new_sp, i) and new_sp.id_to_piece(i) not in have]
    return out[:max_new] if max_new is not None else out


def extend_tokenizer(base_path: str | Path, texts: Iterable[str], out_path: str | Path,
                     new_vocab_size: int = 8000, max_new: int | None = None,
                     model_type: str | None = None) -> dict:
    """Train a tokenizer on `texts`, append its unseen pieces to the base model, write `out_path`.

    BPE merges are applied by score, so appended pieces score below every base piece
    (the base tokenisation of old text is kept as far as possible) and keep their
    learned order among themselves. Returns {"base_vocab", "added", "vocab_size"}.
    """
    base_path, out_path = Path(base_path), Path(out_path)
    base = load_tokenizer(base_path)
    base_bytes = base_path.read_bytes()
    if model_type is None:
        model_type = _model_type(base_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        new = load_tokenizer(train_tokenizer(texts, Path(tmp) / "new.model", new_vocab_size, model_type))
    added = new_pieces(base, new, max_new)
    if not added:
        raise UserError("the new language adds no pieces to the base tokenizer; raise --new-vocab-size")
    floor = min(base.get_score(i) for i in range(base.get_piece_size()) if _is_normal(base, i))
    recs = []
    for rank, (piece, score) in enumerate(added):
        # BPE: ranks below the base; unigram: the new model's log-probabilities, which are comparable.
        recs.append(_piece_record(piece, floor - 1.0 - rank if model_type == "bpe" else score))
    # Repeated protobuf fields may be appended after other fields: parsers concatenate them.
    write_bytes(out_path, base_bytes + b"".join(recs))
    ext = load_tokenizer(out_path)
    assert ext.get_piece_size() == base.get_piece_size() + len(added)
    return {"base_vocab": base.get_piece_size(), "added": len(added), "vocab_size": ext.get_piece_size()}


def extend_hf_tokenizer(base: str | Path, texts: Iterable[str], out_dir: str | Path,
                        new_vocab_size: int = 8000, max_new: int | None = None) -> dict:
    """Learn BPE merges on `texts` with the base's own normalizer and pre-tokenizer, and append the ones
    that make new tokens: old ids never move, new ids follow the highest id in use (added tokens
    included), new merges rank below every old one. Writes the base's tokenizer files into `out_dir`
    with the extended tokenizer.json, after checking that old ids and round trips hold."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    base_tok = open_tokenizer(base)
    if base_tok.kind != "hf" or base_tok.sha256 is None:
        raise UserError(f"{base} is not a Hugging Face tokenizer with a tokenizer.json")
    spec = json.loads(base_tok.file.read_text(encoding="utf-8"))
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"{base_tok.file}: a {model.get('type')} tokenizer; vocabulary extension supports BPE "
                        "tokenizers (byte-level or sentencepiece-style)")
    learner_spec = {**spec, "added_tokens": [], "post_processor": None,
                    "model": {**model, "vocab": {}, "merges": [], "dropout": None}}
    learner = Tokenizer.from_str(json.dumps(learner_spec))
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    learner.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=new_vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else []))
    vocab = dict(model["vocab"])
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    as_text = bool(model["merges"]) and isinstance(model["merges"][0], str)  # "a b" or ["a", "b"]
    merges = list(model["merges"])
    for m in json.loads(learner.to_str())["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a + b in vocab or a not in vocab or b not in vocab:
            continue
        vocab[a + b], next_id = next_id, next_id + 1
        merges.append(f"{a} {b}" if as_text else [a, b])
        if max_new is not None and len(vocab) - len(model["vocab"]) >= max_new:
            break
    added = len(vocab) - len(model["vocab"])
    if not added:
        raise UserError("the new language adds no tokens to the base tokenizer; raise --new-vocab-size")
    spec["model"] = {**model, "vocab": vocab, "merges": merges}
    with atomic_dir(out_dir) as tmp:
        copy_tokenizer(base_tok, tmp)
        write_text(tmp / "tokenizer.json", json.dumps(spec, ensure_ascii=False))
        ext = HFTokenizer(tmp)
        old = base_tok.tok.get_vocab()
        if any(ext.tok.get_vocab().get(t) != i for t, i in old.items()):
            raise UserError("extending the tokenizer moved an old id; not written")  # a bug, never bad input
    return {"base_vocab": base_tok.vocab_size, "added": added, "vocab_size": ext.vocab_size}


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def _fields(buf: bytes):
    """(field number, wire type, value) of a serialized protobuf message, top level only."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 2:
            ln, pos = _read_varint(buf, pos)
            val, pos = buf[pos:pos + ln], pos + ln
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        else:
            raise UserError("tokenizer file is not a sentencepiece model (bad protobuf)")
        yield num, wt, val


def _model_type(model_bytes: bytes) -> str:
    """TrainerSpec.model_type (ModelProto field 2, TrainerSpec field 3: 1 unigram, 2 bpe)."""
    for num, wt, val in _fields(model_bytes):
        if num == 2 and wt == 2:
            for n2, w2, v2 in _fields(val):
                if n2 == 3 and w2 == 0:
                    return {1: "unigram", 2: "bpe"}.get(v2, "unigram")
    return "unigram"  # proto default


def main(argv: list[str] | None = None) -> None:
    from data_prep.tok_report import texts_by_language, tokenizer_report
    p = argparse.ArgumentParser(prog="python -m data_prep.vocab_ext", description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a sentencepiece .model, or a Hugging Face base's directory "
                   "(its tokenizer.json); --out is then a directory")
    p.add_argument("--input", action="append", required=True, help="LANG=GLOB of the new language")
    p.add_argument("--out", required=True)
    p.add_argument("--new-vocab-size", type=int, default=8000,
                   help="vocab of the tokenizer learned on the new language")
    p.add_argument("--max-new", type=int, default=None, help="cap on pieces added")
    p.add_argument("--text-field", default="text")
    a = p.parse_args(argv)
    if not Path(a.base).exists():
        raise UserError(f"base tokenizer not found: {a.base}")
    texts = texts_by_language(a.input, a.text_field)
    extend = extend_tokenizer if Path(a.base).suffix == ".model" else extend_hf_tokenizer
    info = extend(a.base, [t for ts in texts.values() for t in ts], a.out, a.new_vocab_size, a.max_new)
    info["before"] = tokenizer_report(a.base, texts)["languages"]
    info["after"] = tokenizer_report(a.out, texts)["languages"]
    print(json.dumps(info, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    cli_entry(main)()
