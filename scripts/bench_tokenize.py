"""Tokenisation throughput (MB/s of UTF-8 text) with 1 and 2 processes, as one JSON line.

python -m scripts.bench_tokenize [--mb 16] [--vocab-size 8192]
Text: the English and Korean test fixtures (Bible chapters), repeated to --mb MB. The
tokenizer (BPE) is trained on them first; pool start-up is excluded from the timing.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from data_prep.shards import encode_parallel, make_pool, token_dtype
from data_prep.sources import read_files
from data_prep.tokenizer import train_tokenizer
from minimodel.tokenizers.chat import load_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=16.0)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--model-type", default="bpe")
    p.add_argument("--repeats", type=int, default=3, help="best of N")
    a = p.parse_args(argv)
    docs = [d.text for d in read_files(str(FIXTURES / "*.jsonl"))]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(docs, Path(tmp) / "bench.model", a.vocab_size, a.model_type)
        size = sum(len(d.encode("utf-8")) for d in docs)
        corpus = docs * max(1, int(a.mb * 1e6 / size))
        n_bytes = sum(len(d.encode("utf-8")) for d in corpus)
        dtype = token_dtype(load_tokenizer(tok).get_piece_size())
        res, ref = {}, None
        for procs in (1, 2):
            pool = make_pool(tok, procs) if procs > 1 else None
            best = float("inf")
            for _ in range(a.repeats):
                t = time.perf_counter()
                tokens, nb = encode_parallel(tok, corpus, dtype, procs, pool=pool)
                best = min(best, time.perf_counter() - t)
            if pool is not None:
                pool.close()
                pool.join()
            if ref is None:
                ref = tokens
            assert np.array_equal(ref, tokens) and nb == n_bytes  # same ids whatever the process count
            res[procs] = n_bytes / best / 1e6
    print(json.dumps({"tokenizer": f"{a.model_type} {a.vocab_size}", "mb": round(n_bytes / 1e6, 2),
                      "tokens": int(len(ref)), "mb_per_s_1proc": round(res[1], 2),
                      "mb_per_s_2proc": round(res[2], 2), "speedup_2proc": round(res[2] / res[1], 2)}))


if __name__ == "__main__":
    main()
