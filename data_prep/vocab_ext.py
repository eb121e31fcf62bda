"""Vocabulary extension: add pieces learned on a new language to an existing sentencepiece model.

Existing ids never move (new pieces are appended), so a model trained with the base
tokenizer keeps its embeddings; rows for the new ids are added on the model side.

CLI: python -m data_prep.vocab_ext --base en.model --input ko=ko/*.jsonl --new-vocab-size 8000 --out enko.model
"""
from __future__ import annotations

import argparse
import json
import struct
import tempfile
from pathlib import Path
from typing import Iterable

from data_prep.tokenizer import train_tokenizer
from minimodel.errors import UserError, cli_entry
from minimodel.io import write_bytes
from minimodel.tokenizer import load_tokenizer


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
    p.add_argument("--base", required=True)
    p.add_argument("--input", action="append", required=True, help="LANG=GLOB of the new language")
    p.add_argument("--out", required=True)
    p.add_argument("--new-vocab-size", type=int, default=8000, help="vocab of the tokenizer learned on the new language")
    p.add_argument("--max-new", type=int, default=None, help="cap on pieces added")
    p.add_argument("--text-field", default="text")
    a = p.parse_args(argv)
    if not Path(a.base).is_file():
        raise UserError(f"base tokenizer not found: {a.base}")
    texts = texts_by_language(a.input, a.text_field)
    info = extend_tokenizer(a.base, [t for ts in texts.values() for t in ts], a.out, a.new_vocab_size, a.max_new)
    info["before"] = tokenizer_report(a.base, texts)["languages"]
    info["after"] = tokenizer_report(a.out, texts)["languages"]
    print(json.dumps(info, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    cli_entry(main)()
