"""Generated ("dream") replay: the frozen base writes the original-language replay set itself.

A user who adapts a downloaded base rarely has its pretraining data. The base's own samples stand
in for it (self-synthesized rehearsal): before the first CPT step it samples documents with the KV
cache, and they are written as an ordinary token-shard set (train split) whose manifest records the
generator, the sampling settings, the seed, the token count, the wall time and a sample of the text.
The same settings and seed give the same set, which is reused instead of sampled again; other
settings in the same directory are refused. The set is written atomically: a killed generation
leaves nothing behind and simply starts over (the command: python -m minimodel.dream).

The ids are the sampled ids themselves (not decoded and re-encoded): what the base produced, so a
distillation target on them is the base's distribution at exactly those contexts.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minimodel.common.errors import UserError
from minimodel.common.io import atomic_dir, file_sha256, read_utf8, write_json
from minimodel.data.format import build_manifest, read_manifest, token_dtype, write_split
from minimodel.forgetting.language_mix import language_mix
from minimodel.tokenizers.tokenizer import Tokenizer, copy_tokenizer, open_tokenizer

SAMPLE_CHARS = 600  # of decoded text kept in the manifest, for a person to read


@dataclass(frozen=True)
class DreamSettings:
    """Everything that determines a generated set (recorded in its manifest as "generator")."""
    base: str
    tokens: int
    seq_len: int
    seed: int
    temperature: float = 1.0
    top_p: float = 1.0
    prompts: str = ""          # a UTF-8 file of prefixes, one per line ("" = from the document start)
    batch: int = 64

    def record(self) -> dict:
        out = asdict(self)
        out["prompts_sha256"] = file_sha256(Path(self.prompts)) if self.prompts else ""
        return out


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 prefix file; a clear error when it is missing, empty or not UTF-8."""
    text = read_utf8(Path(path), "write the prefixes as UTF-8 text, one per line")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"replay prompt file {path} holds no prefix; write one short prefix per line, "
                        "or set replay.prompts=\"\" to sample from the start of a document")
    return lines


def check_settings(settings: DreamSettings, out_dir: Path) -> dict | None:
    """Before any work: the prefixes read, and `out_dir` is empty, or a generated set of exactly these
    settings (returned: reuse it), never another set."""
    if settings.prompts:
        read_prompts(settings.prompts)
    if not (out_dir / "manifest.json").is_file():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"{out_dir} exists and is not a generated replay set; choose another replay.path "
                            "for the generated set")
        return None
    m = read_manifest(out_dir)
    made_with = m.get("generator")
    if made_with is None:
        raise UserError(f"{out_dir} is a prepared data set, not a generated one; with replay.source=generated, "
                        "replay.path is where the base writes its samples: choose another directory, or read "
                        "this set with replay.source=data")
    wanted = settings.record()
    if made_with != wanted:
        differ = sorted(k for k in set(wanted) | set(made_with) if wanted.get(k) != made_with.get(k))
        raise UserError(f"{out_dir} holds a set generated with other settings ({', '.join(differ)} differ); "
                        "delete it to generate again, or point replay.path elsewhere")
    return m


def _prompt_rows(tok: Tokenizer, prefix_id: int, prompts: list[str] | None, n: int, first: int) -> list[list[int]]:
    """The prompts of samples first .. first+n-1: the document start, or the prefixes in turn."""
    if not prompts:
        return [[prefix_id]] * n
    return [[prefix_id, *tok.encode(prompts[(first + i) % len(prompts)])] for i in range(n)]


def _continue(lm, prompt: torch.Tensor, max_new: int, settings: DreamSettings, eos_id: int | None,
              seed: int) -> torch.Tensor:
    """(B, T) prompt -> (B, T + new) with the KV cache; seeded per batch, so the set does not depend
    on what ran before it in the process."""
    return lm.sample(prompt, max_new, settings.temperature, settings.top_p, seed, eos_id)


def _document(row: list[int], prompt_len: int, tok: Tokenizer) -> list[int]:
    """One sample as the pretraining stream holds a document: (BOS when the tokenizer adds one) text, EOS.
    The kit's tokenizers and Qwen's condition a document on the previous one's EOS, not on a BOS."""
    eos = tok.eos_id
    text = row[:prompt_len] if tok.adds_bos else row[1:prompt_len]
    new = row[prompt_len:]
    if eos is not None and eos in new:
        new = new[:new.index(eos)]
    return [*text, *new] + ([eos] if eos is not None else [])


@torch.no_grad()
def sample_documents(lm, settings: DreamSettings, progress: bool = False) -> list[list[int]]:
    """Documents sampled from `lm` until they hold settings.tokens ids."""
    tok = lm.require_tokenizer()
    prompts = read_prompts(settings.prompts) if settings.prompts else None
    room = min(settings.seq_len, lm.config.max_seq_len)
    docs, total, batch_index = [], 0, 0
    bar = None
    if progress:

        bar = tqdm(total=settings.tokens, unit="tok", desc="dream replay", dynamic_ncols=True)
    was_training = lm.training
    lm.eval()
    try:
        while total < settings.tokens:
            # the last batch only as large as the tokens still missing need (at one full sample per row)
            n = min(settings.batch, -(-(settings.tokens - total) // room))
            rows = _prompt_rows(tok, lm.prefix_id, prompts, n, len(docs))
            by_length: dict[int, list[int]] = {}  # no padding: one generate call per prompt length
            for i, r in enumerate(rows):
                by_length.setdefault(len(r), []).append(i)
            batch_docs: list = [None] * len(rows)
            for length, members in by_length.items():
                if length >= room:
                    raise UserError(f"a replay prefix is {length} tokens, as long as the sampled documents "
                                    f"({room}); shorten the prefixes in {settings.prompts}")
                prompt = torch.tensor([rows[i] for i in members], dtype=torch.long, device=lm.device)
                out = _continue(lm, prompt, room - length, settings, tok.eos_id,
                                seed=settings.seed * 1_000_003 + batch_index)
                batch_index += 1
                for i, row in zip(members, out.tolist()):
                    batch_docs[i] = _document(row, length, tok)
            for doc in batch_docs:  # in prompt order
                docs.append(doc)
                total += len(doc)
                if bar is not None:
                    bar.update(len(doc))
    finally:
        lm.train(was_training)
        if bar is not None:
            bar.close()
    return docs


def write_dream_set(lm, settings: DreamSettings, out_dir: str | Path, tokenizer: str | Path | None = None,
                    progress: bool = False) -> dict:
    """Sample from `lm` and write the set atomically; returns its manifest. `tokenizer` is the file the
    set declares (the CPT data's, which may extend the base's: the base's ids are valid in it)."""
    out_dir = Path(out_dir)
    reused = check_settings(settings, out_dir)
    if reused is not None:
        return reused
    tok = open_tokenizer(tokenizer) if tokenizer is not None else lm.require_tokenizer()
    t0 = time.perf_counter()
    docs = sample_documents(lm, settings, progress)
    seconds = time.perf_counter() - t0
    ids = np.fromiter((i for d in docs for i in d), dtype=np.int64)
    texts = [tok.decode(d) for d in docs]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    dtype = token_dtype(tok.vocab_size)
    with atomic_dir(out_dir) as tmp:
        copy_tokenizer(tok, tmp)
        own = open_tokenizer(tmp / ("tokenizer.model" if tok.kind == "sentencepiece" else "tokenizer.json"))
        split = {"shards": write_split(tmp, "train", ids, dtype), "docs": len(docs), "bytes": n_bytes,
                 "tokens": int(len(ids)), "bytes_per_token": round(n_bytes / max(len(ids), 1), 6)}
        manifest = build_manifest(own, {"train": split}, [{"generated_by": settings.base}], dtype,
                                  f"generated replay of {settings.base}")
        manifest.update({
            "language": "generated", "max_token_id": int(ids.max()) if len(ids) else -1,
            "generator": settings.record(),
            "generation": {"seconds": round(seconds, 3), "device": str(lm.device), "samples": len(docs),
                           "tok_per_s": round(len(ids) / max(seconds, 1e-9), 1)},
            "language_mix": language_mix(texts),  # did the base dream in every language it knows?
            "sample": "\n---\n".join(texts)[:SAMPLE_CHARS],
        })
        write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete set
    return manifest
