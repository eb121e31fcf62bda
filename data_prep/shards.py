"""Token shards and their manifest: the format the trainer reads.

A prepared set is a directory:
    tokenizer.model             the kit's sentencepiece tokenizer, or a Hugging Face base's
                                tokenizer.json (+ tokenizer_config.json, chat template ...)
    train/shard_00000.bin ...   raw little-endian token ids (uint16 if vocab < 65536, else uint32)
    val/shard_00000.bin ...
    manifest.json               see `build_manifest`
Documents are concatenated as the tokenizer's convention has them: EOS after each one, BOS
before each when the tokenizer adds one (Llama-style). The directory is written as a whole
(temp dir, then rename); a re-run with the same tokenizer, documents and sources finds
the same `fingerprint` in manifest.json and writes nothing.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import shutil
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from minimodel.common.errors import UserError
from minimodel.common.io import atomic_dir, file_sha256, write_bytes, write_json
from minimodel.data.format import (
    SHARDS_FORMAT,
    build_manifest,
    manifest_problem,
    read_manifest,
    token_dtype,
    write_split,
)
from minimodel.tokenizers.tokenizer import Tokenizer, open_tokenizer

SHARD_TOKENS = 1 << 24  # ~32 MB per uint16 shard
CHUNK_BYTES = 1 << 20  # work unit per process


def _flatten(docs: list[list[int]], dtype) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(docs), dtype=dtype, count=sum(map(len, docs)))


def encode_docs(tok: Tokenizer, docs: Sequence[str]) -> tuple[np.ndarray, int]:
    """Token ids of `docs` as the stream holds them (the tokenizer's BOS/EOS conventions), and the
    UTF-8 byte count of the text."""
    docs = list(docs)
    return _flatten(tok.document_ids(docs), np.int64), sum(len(d.encode("utf-8")) for d in docs)


# --- several processes (sentencepiece): each loads the tokenizer once and encodes ~1 MB chunks of
# documents. A Hugging Face tokenizer encodes a batch on several threads by itself.
_WORKER_TOK = None


def _worker_init(path: str) -> None:
    global _WORKER_TOK
    _WORKER_TOK = open_tokenizer(path)


def _worker_encode(args) -> tuple[bytes, int]:
    docs, dtype = args
    tokens, n_bytes = encode_docs(_WORKER_TOK, docs)
    return tokens.astype(np.dtype(dtype)).tobytes(), n_bytes


def _chunks(docs: Sequence[str], chunk_bytes: int) -> Iterable[list[str]]:
    chunk, size = [], 0
    for d in docs:
        chunk.append(d)
        size += len(d)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encode_parallel(tokenizer_path: str | Path, docs: Sequence[str], dtype: np.dtype,
                    num_proc: int = 1, chunk_bytes: int = CHUNK_BYTES, pool=None) -> tuple[np.ndarray, int]:
    """encode_docs over `num_proc` processes; output order = document order."""
    if num_proc <= 1 and pool is None:
        tokens, n_bytes = encode_docs(open_tokenizer(tokenizer_path), docs)
        return tokens.astype(dtype), n_bytes
    own = pool is None
    if own:
        pool = make_pool(tokenizer_path, num_proc)
    try:
        parts = pool.imap(_worker_encode, ((c, dtype.str) for c in _chunks(docs, chunk_bytes)))
        arrays, n_bytes = [], 0
        for buf, nb in parts:
            arrays.append(np.frombuffer(buf, dtype=dtype))
            n_bytes += nb
    finally:
        if own:
            pool.close()
            pool.join()
    return (np.concatenate(arrays) if arrays else np.zeros(0, dtype)), n_bytes


def make_pool(tokenizer_path: str | Path, num_proc: int):
    # fork starts in milliseconds; data_prep holds no threads that fork would break
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(num_proc, initializer=_worker_init, initargs=(str(tokenizer_path),))


def command_line() -> str:
    """The command that is running, as a person would retype it (python -m pkg.mod args)."""
    import shlex
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else shlex.quote(sys.argv[0])
    return " ".join([head, *map(shlex.quote, sys.argv[1:])])


def fingerprint(tokenizer_sha: str, docs_by_split: dict[str, list[str]], extra) -> str:
    """What determines the output: the tokenizer, every document, and the recorded metadata."""
    h = hashlib.sha256(f"{SHARDS_FORMAT}\0{tokenizer_sha}\0".encode())
    h.update(json.dumps(extra, sort_keys=True, ensure_ascii=False, default=str).encode())
    for split in sorted(docs_by_split):
        h.update(f"\0split\0{split}\0{len(docs_by_split[split])}\0".encode())
        for d in docs_by_split[split]:
            h.update(d.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


def _previous_manifest(set_dir: str | Path) -> dict | None:
    """The manifest of a set prepared before; None when it is missing, unreadable or malformed."""
    p = Path(set_dir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return m if manifest_problem(m) is None else None


def _complete(set_dir: Path, manifest: dict) -> bool:
    itemsize = np.dtype(manifest["dtype"]).itemsize
    tok = set_dir / manifest["tokenizer"]["file"]
    if not tok.is_file() or file_sha256(tok) != manifest["tokenizer"]["sha256"]:
        return False
    for split in manifest["splits"].values():
        for s in split["shards"]:
            f = set_dir / s["file"]
            if not f.is_file() or f.stat().st_size != s["tokens"] * itemsize:
                return False
    return True


def prepare_from_docs(out_dir: str | Path, tokenizer_path: str | Path,
                      docs_by_split: dict[str, Iterable[str]], sources: list | None = None, *,
                      num_proc: int = 1, extra_manifest: dict | None = None,
                      extra_files: dict[str, str | bytes] | None = None,
                      shard_tokens: int = SHARD_TOKENS, force: bool = False) -> dict:
    """Tokenise documents per split and write shards + manifest.json into out_dir.

    The tokenizer is copied in as tokenizer.model; `extra_files` (relative path -> text or
    bytes, e.g. held-out text) and `extra_manifest` keys go into the same directory, which
    replaces any previous out_dir as a whole. Returns the manifest.
    """
    out_dir = Path(out_dir)
    source_tok = open_tokenizer(tokenizer_path)
    if source_tok.sha256 is None:
        raise UserError(f"{source_tok.path} has no tokenizer.json: a data set needs the file that fixes the ids")
    docs_by_split = {s: list(d) for s, d in docs_by_split.items()}
    if not any(docs_by_split.values()):
        raise UserError(f"empty corpus: no documents left for {out_dir}; check the sources and filters")
    fp = fingerprint(source_tok.sha256, docs_by_split, [sources or [], extra_manifest or {},
                                                        sorted((extra_files or {}).items()), shard_tokens])
    old = _previous_manifest(out_dir)
    if not force and old and old.get("fingerprint") == fp and _complete(out_dir, old):
        return old
    dtype = token_dtype(source_tok.vocab_size)
    parallel = num_proc > 1 and source_tok.kind == "sentencepiece"
    pool = make_pool(source_tok.file, num_proc) if parallel else None
    try:
        with atomic_dir(out_dir) as tmp:
            for f in source_tok.files():  # the set carries its tokenizer (sentencepiece: as tokenizer.model)
                shutil.copyfile(f, tmp / ("tokenizer.model" if source_tok.kind == "sentencepiece" else f.name))
            tok = open_tokenizer(tmp / ("tokenizer.model" if source_tok.kind == "sentencepiece" else "tokenizer.json"))
            splits, max_id = {}, -1
            for split, docs in docs_by_split.items():
                tokens, n_bytes = encode_parallel(tok.file, docs, dtype, num_proc if parallel else 1, pool=pool)
                if len(tokens):
                    max_id = max(max_id, int(tokens.max()))
                shards = write_split(tmp, split, tokens, dtype, shard_tokens)
                splits[split] = {"shards": shards, "docs": len(docs), "bytes": n_bytes,
                                 "tokens": int(len(tokens)),
                                 "bytes_per_token": round(n_bytes / max(len(tokens), 1), 6)}
            for rel, data in (extra_files or {}).items():
                write_bytes(tmp / rel, data.encode("utf-8") if isinstance(data, str) else data)
            manifest = build_manifest(tok, splits, sources or [], dtype, command_line())
            manifest["max_token_id"] = max_id
            manifest["fingerprint"] = fp
            manifest.update(extra_manifest or {})
            write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete set
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return manifest


def check_prepared(set_dir: str | Path, tokenizer_path: str | Path | None = None,
                   scan: bool = True) -> dict:
    """Validate a prepared set (and optionally a tokenizer meant to read it); returns its manifest."""
    set_dir = Path(set_dir)
    m = read_manifest(set_dir)
    tok = Path(tokenizer_path) if tokenizer_path else set_dir / m["tokenizer"]["file"]
    if not tok.exists():
        raise UserError(f"{set_dir}: tokenizer {tok} missing; copy the tokenizer the shards were made with")
    opened = open_tokenizer(tok)  # a file, or a model directory
    if opened.sha256 != m["tokenizer"]["sha256"]:
        raise UserError(f"shard/tokenizer mismatch: {tok} is not the tokenizer {set_dir} was "
                        "tokenised with; re-run data_prep with this tokenizer")
    vocab = opened.vocab_size
    if vocab != m["vocab_size"] or token_dtype(vocab).name != m["dtype"]:
        raise UserError(f"{set_dir}: manifest vocab/dtype disagree with the tokenizer; re-run data_prep")
    dtype = np.dtype(m["dtype"])
    for split in m["splits"].values():
        for s in split["shards"]:
            f = set_dir / s["file"]
            if not f.is_file() or f.stat().st_size != s["tokens"] * dtype.itemsize:
                raise UserError(f"{f}: missing or truncated shard; re-run data_prep")
            if scan and s["tokens"]:
                top = int(np.fromfile(f, dtype=dtype).max())
                if top >= vocab:
                    raise UserError(f"{f}: token id {top} >= vocab size {vocab}; "
                                    "shards and tokenizer do not match")
    return m


def read_tokens(set_dir: str | Path, split: str) -> np.ndarray:
    """All tokens of one split (for small sets, mixtures and tests)."""
    set_dir = Path(set_dir)
    m = read_manifest(set_dir)
    if split not in m["splits"]:
        raise UserError(f"{set_dir}: no split {split!r}; splits are {sorted(m['splits'])}")
    dtype = np.dtype(m["dtype"])
    for s in m["splits"][split]["shards"]:
        if not (set_dir / s["file"]).is_file():
            raise UserError(f"{set_dir / s['file']}: shard missing; prepare the set again")
    parts = [np.fromfile(set_dir / s["file"], dtype=dtype) for s in m["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)
