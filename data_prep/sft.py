"""SFT data: conversations or Alpaca records -> token ids + a loss mask on assistant tokens.

With a Hugging Face base's tokenizer (its directory or tokenizer.json), the base's own chat template
renders the conversation and the mask covers what each assistant turn adds (minimodel.tokenizers.tokenizer).
With the kit's sentencepiece tokenizers, the template is ChatML (Qwen/MiniMind; the markers are single
pieces of our tokenizers):
    <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...<|im_end|>\n
The mask is 1 on each assistant reply and its closing <|im_end|> (so the model learns to
stop), 0 elsewhere. Ids are BOS + template + EOS, encoded as ONE string, exactly as
`encode_chat(..., add_generation_prompt=True)` encodes a prompt at inference.

On disk (format "minimodel-sft-v1"): the tokenizer's files, manifest.json, and per split
`{split}/tokens.bin` (uint16/uint32), `{split}/mask.bin` (uint8, same length),
`{split}/index.bin` (uint64 start offsets of the examples, plus the end).

python -m data_prep.sft --out data/sft_ko --files ko_alpaca.jsonl --tokenizer data/demo_ko/tokenizer.model
python -m data_prep.sft --out data/sft_ko --hf FreedomIntelligence/alpaca-gpt4-korean --tokenizer ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from data_prep.clean import clean_text
from data_prep.shards import command_line, token_dtype
from data_prep.splits import is_heldout
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import atomic_dir, write_bytes, write_json
from minimodel.data.format import SFT_FORMAT, load_sft_split
from minimodel.tokenizers.chat import CHAT_TOKENS
from minimodel.tokenizers.tokenizer import copy_tokenizer, open_tokenizer

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def to_messages(rec: dict, where: str = "record") -> list[dict]:
    """A record in any supported shape -> [{"role", "content"}]."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec or "conversations" in rec:
        raw = rec.get("messages", rec.get("conversations"))
        if not isinstance(raw, list):
            raise UserError(f"{where}: 'messages' must be a list of {{role, content}}")
        msgs = []
        for m in raw:
            if not isinstance(m, dict):
                raise UserError(f"{where}: each message must be an object with role and content")
            role = m.get("role", _SHAREGPT_ROLES.get(m.get("from", ""), m.get("from")))
            content = m.get("content", m.get("value"))
            if role not in ROLES or not isinstance(content, str):
                raise UserError(f"{where}: message needs role in {ROLES} and text content, got {sorted(m)}")
            msgs.append({"role": role, "content": content})
    elif "instruction" in rec and "output" in rec:
        wrong = [k for k in ("instruction", "input", "output", "system")
                 if rec.get(k) is not None and not isinstance(rec[k], str)]
        if wrong:
            raise UserError(f"{where}: Alpaca field(s) {wrong} must be text, got "
                            f"{[type(rec[k]).__name__ for k in wrong]}")
        prompt = rec["instruction"] or ""
        if rec.get("input"):
            prompt = f"{prompt}\n\n{rec['input']}"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec["output"] or ""}]
        if rec.get("system"):
            msgs.insert(0, {"role": "system", "content": rec["system"]})
    else:
        raise UserError(f"{where}: not a conversation or Alpaca record; fields are {sorted(rec)} "
                        "(need 'messages' or 'instruction'+'output')")
    if not any(m["role"] == "assistant" for m in msgs):
        raise UserError(f"{where}: no assistant message to learn from")
    return [{"role": m["role"], "content": clean_text(m["content"])} for m in msgs]


def sft_records(files: list[str] | None, hf: str | None, hf_config: str | None, hf_split: str,
                hf_data_files=None) -> Iterator[tuple[str, dict]]:
    from data_prep.sources import hf_records, records
    if files:
        yield from records(files)
    if hf:
        yield from hf_records(hf, hf_config, hf_split, hf_data_files)


def prepare_sft(out_dir: str | Path, tokenizer_path: str | Path, recs: Iterable[tuple[str, dict]],
                val_fraction: float = 0.01, max_tokens: int | None = None, seed: int = 0,
                sources: list | None = None) -> dict:
    """Encode records into the SFT format above; the directory is written atomically."""
    out_dir = Path(out_dir)
    tok = open_tokenizer(tokenizer_path)
    dtype = token_dtype(tok.vocab_size)
    data = {s: {"ids": [], "mask": [], "index": [0]} for s in ("train", "val")}
    stats = {"examples": 0, "too_long": 0}
    for n, (where, rec) in enumerate(recs):
        ids, mask = tok.chat_ids(to_messages(rec, where))
        stats["examples"] += 1
        if max_tokens is not None and len(ids) > max_tokens:
            stats["too_long"] += 1
            continue
        key = str(rec.get("id", n)) if isinstance(rec, dict) else str(n)
        d = data["val" if is_heldout(key, val_fraction, seed) else "train"]
        d["ids"].extend(ids)
        d["mask"].extend(mask)
        d["index"].append(len(d["ids"]))
    if not data["train"]["ids"]:
        raise UserError("empty SFT corpus: no usable examples; check the source and --max-tokens")
    with atomic_dir(out_dir) as tmp:
        copy_tokenizer(tok, tmp)
        splits = {}
        for s, d in data.items():
            write_bytes(tmp / s / "tokens.bin", np.asarray(d["ids"], dtype=dtype).tobytes())
            write_bytes(tmp / s / "mask.bin", np.asarray(d["mask"], dtype=np.uint8).tobytes())
            write_bytes(tmp / s / "index.bin", np.asarray(d["index"], dtype="<u8").tobytes())
            splits[s] = {"tokens_file": f"{s}/tokens.bin", "mask_file": f"{s}/mask.bin",
                         "index_file": f"{s}/index.bin", "examples": len(d["index"]) - 1,
                         "tokens": len(d["ids"]), "loss_tokens": int(sum(d["mask"]))}
        # padding sits where the mask is 0: any id serves, the tokenizer's own pad when it has one
        pad = tok.pad_id if tok.pad_id is not None else tok.eos_id or 0
        manifest = {"format": SFT_FORMAT, "dtype": dtype.name, "vocab_size": tok.vocab_size,
                    "tokenizer": {"kind": tok.kind, "file": "tokenizer.model" if tok.kind == "sentencepiece"
                                  else tok.file.name, "sha256": tok.sha256,
                                  "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": pad},
                    "template": "chatml" if tok.kind == "sentencepiece" else "the base's chat template",
                    "chat_tokens": list(CHAT_TOKENS) if tok.kind == "sentencepiece" else [], "splits": splits,
                    "stats": stats, "sources": sources or [], "command": command_line()}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_sft(set_dir: str | Path, split: str = "train") -> list[tuple[np.ndarray, np.ndarray]]:
    """[(ids, mask)] per example (for tests and small sets)."""
    _, ids, mask, idx = load_sft_split(set_dir, split)
    return [(ids[a:b], mask[a:b]) for a, b in zip(idx[:-1], idx[1:])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.sft", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", required=True, help="the kit's sentencepiece .model (ChatML), or a Hugging Face "
                   "base's tokenizer (its directory or tokenizer.json: its own chat template)")
    p.add_argument("--files", action="append", help=".jsonl[.gz] or .parquet with messages or instruction/input/output")
    p.add_argument("--hf", default=None, help="Hugging Face dataset id (e.g. FreedomIntelligence/alpaca-gpt4-korean)")
    p.add_argument("--hf-config", default=None)
    p.add_argument("--hf-split", default="train")
    p.add_argument("--hf-data-files", action="append", default=None)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--max-tokens", type=int, default=None, help="drop longer examples")
    p.add_argument("--max-examples", type=int, default=None)
    a = p.parse_args(argv)
    if not a.files and not a.hf:
        raise UserError("no source given; use --files or --hf")
    recs = sft_records(a.files, a.hf, a.hf_config, a.hf_split, a.hf_data_files)
    if a.max_examples is not None:
        import itertools
        recs = itertools.islice(recs, a.max_examples)
    sources = [{"kind": "files", "glob": f} for f in a.files or []] + (
        [{"kind": "hf", "id": a.hf, "config": a.hf_config, "split": a.hf_split}] if a.hf else [])
    m = prepare_sft(a.out, a.tokenizer, recs, a.val_fraction, a.max_tokens, sources=sources)
    print(json.dumps({s: {k: v[k] for k in ("examples", "tokens", "loss_tokens")} for s, v in m["splits"].items()}))


if __name__ == "__main__":
    cli_entry(main)()
