"""Sampling throughput of minimodel.nn.generate (what generated replay and eval generations use), one
JSON line: tokens/s and a digest of the sampled ids, so two versions of the code can be compared for
speed and for identical samples at the same seed.

    python -m scripts.bench generate [--preset 26m] [--batch 64] [--new-tokens 256] [--prompt-len 16]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch

from minimodel.nn.generate import generate
from minimodel.nn.model import MiniModel, model_config_from


def run(preset: str, batch: int, new_tokens: int, prompt_len: int, seed: int, dtype: str) -> dict:
    torch.manual_seed(seed)
    model = MiniModel(model_config_from(preset, max_seq_len=prompt_len + new_tokens)).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    ids = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=ids)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = generate(model, prompt, new_tokens, temperature=1.0, generator=gen)
    seconds = time.perf_counter() - t0
    return {"bench": "generate", "preset": preset, "batch": batch, "new_tokens": new_tokens, "prompt_len": prompt_len,
            "dtype": dtype, "threads": torch.get_num_threads(), "seconds": round(seconds, 3),
            "tokens_per_s": round(batch * new_tokens / seconds, 1),
            "sample_sha256": hashlib.sha256(out.numpy().tobytes()).hexdigest()[:16]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="26m")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args(argv)
    row = run(args.preset, args.batch, args.new_tokens, args.prompt_len, args.seed, args.dtype)
    print(json.dumps(row), flush=True)
    return row
