"""Held-out bits per byte: the cross-language, cross-tokenizer metric.

    python -m eval.bpb runs/quickstart/core --data data/demo_en --data data/demo_ko
    python -m eval.bpb hf_dir --data ko_news=news.jsonl --out results/bpb.json
    python -m eval.bpb runs/cpt --data data/demo_ko:val          # token shards (same tokenizer only)

bpb = (sum of the NLL, in nats, of the text's tokens) / ln 2 / (UTF-8 bytes of the text).
Text sets are tokenised by the model's own tokenizer; each document is conditioned on EOS
(as in the pretraining stream; BOS for tokenizers without EOS) and has no end token scored. Documents longer than the
context are scored with a sliding window (stride ctx/2 by default): every token is scored
once, with at least ctx - stride tokens of context. Token-shard sets (DIR:SPLIT) score the
stream as pretraining did, EOS included, over the split's document bytes.

A set is DIR (a prepared set: its heldout.jsonl), DIR:SPLIT (its token shards), a .jsonl
({"text"[, "lang"]}) or .txt file, optionally named NAME=SET. Names start with a language
code (en_heldout, ko_news); it is taken from the set's manifest or jsonl "lang" when unnamed.
The numbers print on stderr as they come. The JSON goes to --out, else RUN_DIR/eval/bpb.json for a run
directory, else (a Hugging Face directory or hub id, a .gguf file, BASE --adapter A) to stdout.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from eval.models import (
    free_memory,
    load_model,
    model_cli,
    model_meta,
    output_path,
    save_output,
    scoring_batch,
    small_model_threads,
)
from eval.scoring import score_docs
from minimodel.common.errors import UserError, cli_entry
from minimodel.common.io import read_json_object, read_jsonl_objects, read_utf8
from minimodel.models.causal_lm import CausalLM

NAME_RE = re.compile(r"^[a-z]{2,3}(_[A-Za-z0-9.\-]+)*$")


def _manifest(d: Path) -> dict:
    """A set's manifest.json as a dict ({} when there is none); UserError when it is damaged."""
    p = d / "manifest.json"
    if not p.is_file():
        return {}
    return read_json_object(p, "prepare the set again")


def read_texts(path: Path) -> tuple[list[str], str | None]:
    """Documents of a .jsonl ({"text"}) or .txt file (one document), and their language if stated."""
    if path.suffix == ".txt":
        return [read_utf8(path)], None
    docs, langs = [], set()
    for n, rec in read_jsonl_objects(path, 'one {"text": ...} object per line'):
        if not isinstance(rec.get("text"), str):
            raise UserError(f"{path}:{n} has no \"text\" string field")
        docs.append(rec["text"])
        if rec.get("lang"):
            langs.add(rec["lang"])
    return docs, (langs.pop() if len(langs) == 1 else None)


def parse_set(spec: str) -> dict:
    """NAME=PATH[:SPLIT] -> {"name", "kind": text|shards, "path", "split"}."""
    name, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
    split = None
    path = Path(rest)
    if not path.exists() and ":" in rest:
        head, _, split = rest.rpartition(":")
        path = Path(head)
    if not path.exists():
        shown = str(path) if str(path).isprintable() else repr(str(path))  # the message stays one line
        raise UserError(f"held-out set not found: {shown} (a prepared set dir, DIR:SPLIT, .jsonl or .txt)")
    lang = None
    if path.is_dir():
        man = _manifest(path)
        if not man:
            raise UserError(f"{path} is a directory without manifest.json: not a prepared set")
        lang = man.get("language")
        if split is None:
            held = path / (man.get("heldout", {}).get("file") or "heldout.jsonl")
            if not held.is_file():
                raise UserError(f"{path} has no held-out text ({held.name}); give DIR:val to score its token shards")
            kind, file, stem = "text", held, "heldout"
        else:
            kind, file, stem = "shards", path, split
    else:
        if path.suffix not in (".jsonl", ".txt"):
            raise UserError(f"{path}: held-out text must be .jsonl or .txt")
        kind, file, stem = "text", path, path.stem
        lang = _manifest(path.parent).get("language")
    if not name:
        if kind == "text" and file.suffix == ".jsonl":
            lang = read_texts(file)[1] or lang
        if not lang:
            raise UserError(f"cannot tell the language of {spec}; name it LANG_NAME=... (e.g. en_{stem}={spec})")
        name = stem if stem.startswith(f"{lang}_") else f"{lang}_{stem}"  # en_news.jsonl -> en_news
    if not NAME_RE.match(name):
        raise UserError(f"set name {name!r} must start with a language code, e.g. en_heldout or ko_news")
    return {"name": name, "kind": kind, "path": file, "split": split}


def shard_docs(set_dir: Path, split: str, lm: CausalLM) -> tuple[list[list[int]], int, int]:
    """Token documents (each ending in EOS) of a prepared split, its bytes and its EOS id."""
    from minimodel.data.format import read_manifest

    man = read_manifest(set_dir)
    if split not in man["splits"]:
        raise UserError(f"{set_dir} has no split {split!r}; it has {sorted(man['splits'])}")
    theirs = man["tokenizer"]["sha256"]
    if lm.tokenizer.sha256 != theirs:
        raise UserError(f"{set_dir} was tokenised with another tokenizer than {lm.name}'s (sha256 {theirs[:12]} vs "
                        f"{(lm.tokenizer.sha256 or 'not sentencepiece')[:12]}); "
                        f"score its held-out text instead ({set_dir})")
    dtype = np.dtype(man["dtype"]).newbyteorder("<")
    tokens = np.concatenate([np.fromfile(set_dir / s["file"], dtype=dtype) for s in man["splits"][split]["shards"]])
    eos = int(man["eos_id"])
    cuts = np.flatnonzero(tokens == eos) + 1
    docs = [d.tolist() for d in np.split(tokens.astype(np.int64), cuts) if len(d)]
    return docs, int(man["splits"][split]["bytes"]), eos


def bits_per_byte(lm: CausalLM, s: dict, ctx: int | None = None, stride: int | None = None,
                  batch_size: int = 16, max_docs: int | None = None, max_bytes: int | None = None) -> dict:
    ctx = ctx or lm.context
    stride = stride or max(ctx // 2, 1)
    if stride > ctx:
        raise UserError(f"--stride {stride} is larger than the context {ctx}")
    if s["kind"] == "text":
        texts = read_texts(Path(s["path"]))[0][:max_docs]
        if max_bytes:  # whole documents, up to the first that crosses the limit
            sizes = np.cumsum([len(t.encode("utf-8")) for t in texts])
            texts = texts[:int(np.searchsorted(sizes, max_bytes)) + 1]
        if not texts:
            raise UserError(f"{s['path']} holds no documents")
        docs = [lm.tokenizer.encode(t) for t in texts]
        n_bytes, prefix = sum(len(t.encode("utf-8")) for t in texts), None
    else:
        if max_docs or max_bytes:
            raise UserError("--max-docs and --max-bytes apply to text sets only")
        docs, n_bytes, prefix = shard_docs(Path(s["path"]), s["split"], lm)
    with small_model_threads(lm):
        nll = -sum(score_docs(lm, docs, ctx, stride, batch_size, prefix_id=prefix))
    return {"bpb": nll / math.log(2) / n_bytes, "nll_nats": nll, "bytes": n_bytes,
            "tokens": sum(len(d) for d in docs), "docs": len(docs), "source": str(s["path"]),
            "kind": s["kind"], "split": s["split"], "context": ctx, "stride": stride}


def parse_args(argv):
    ap = model_cli("python -m eval.bpb", __doc__, "bpb.json")
    ap.add_argument("--data", action="append", required=True, help="held-out set (repeatable)")
    ap.add_argument("--ctx", type=int, help="context length (default: the run's training seq_len)")
    ap.add_argument("--stride", type=int, help="sliding-window stride (default ctx/2)")
    ap.add_argument("--batch-size", type=int, help="windows scored at once (default: what the free memory holds, "
                    "at most 16)")
    ap.add_argument("--max-docs", type=int, help="score only the first N documents of text sets")
    ap.add_argument("--max-bytes", type=int, help="score only the first documents of text sets, about N bytes")
    return ap.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    sets = [parse_set(s) for s in args.data]
    dupes = {s["name"] for s in sets if [t["name"] for t in sets].count(s["name"]) > 1}
    if dupes:
        raise UserError(f"two held-out sets are named {sorted(dupes)}; name them NAME=PATH")
    lm = load_model(args.model, args.adapter, args.device, args.ctx)
    out = output_path(lm, args.out, "bpb.json")
    batch = args.batch_size or scoring_batch(lm, lm.context)
    print(f"{lm.name}: context {lm.context}, batch {batch} ({free_memory(lm.device) / 2**30:.1f} GiB free; "
          "--ctx and --batch-size to change)", file=sys.stderr)
    results = {}
    for s in sets:
        results[s["name"]] = r = bits_per_byte(lm, s, args.ctx, args.stride, batch, args.max_docs, args.max_bytes)
        print(f"{lm.name}  {s['name']:<16} {r['bpb']:.4f} bits/byte  ({r['docs']} docs, {r['tokens']} tokens, "
              f"{r['bytes']} bytes, ctx {r['context']}, stride {r['stride']})", file=sys.stderr)
    doc = {**model_meta(lm, args, "eval.bpb", argv), "sets": results}
    save_output(out, doc)
    return doc


if __name__ == "__main__":
    main()
