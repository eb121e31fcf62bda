"""Generated ("dream") replay: the frozen base writes the original-language replay set itself.

A user who adapts a downloaded base rarely has its pretraining data. The base's own samples stand
in for it (self-synthesized rehearsal): before the first CPT step it samples documents with the KV
cache, and they are written as an ordinary token-shard set (train split) whose manifest records the
generator, the sampling settings, the seed, the token count, the wall time and a sample of the text.
The same settings and seed give the same set, which is reused instead of sampled again; other
settings in the same directory are refused. The set is written atomically: a killed generation
leaves nothing behind and simply starts over.

    python -m minimodel.dream --base runs/quickstart/core --out data/dream_en --tokens 20000

The ids are the sampled ids themselves (not decoded and re-encoded): what the base produced, so a
distillation target on them is the base's distribution at exactly those contexts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minimodel.common.errors import UserError, cli_entry
from minimodel.forgetting.dream import DreamSettings, check_settings, write_dream_set


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m minimodel.dream", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the model that dreams: a run dir, HF dir or hub id")
    ap.add_argument("--out", required=True, help="the set to write (a directory)")
    ap.add_argument("--tokens", type=int, required=True, help="tokens to sample")
    ap.add_argument("--seq-len", type=int, default=256, help="longest sample, in tokens (the CPT data.seq_len)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--prompts", default="", help="a UTF-8 file of prefixes, one per line")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", help="the tokenizer file the set declares (default: the base's)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return ap.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    import sys

    from minimodel.common.distributed import pick_device
    from minimodel.models.loading import load

    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.tokens <= 0:
        raise UserError(f"--tokens must be > 0, got {a.tokens}")
    settings = DreamSettings(base=str(a.base), tokens=a.tokens, seq_len=a.seq_len, seed=a.seed,
                             temperature=a.temperature, top_p=a.top_p, prompts=a.prompts, batch=a.batch)
    check_settings(settings, Path(a.out))  # before the base is loaded
    lm = load(a.base).to(pick_device(a.device))
    m = write_dream_set(lm, settings, a.out, a.tokenizer, progress=True)
    print(f"{a.out}: {m['splits']['train']['tokens']} tokens in {m['splits']['train']['docs']} samples "
          f"({m['generation']['seconds']:.1f} s)", file=sys.stderr)
    return m


if __name__ == "__main__":
    main()
