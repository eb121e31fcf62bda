"""Generated ("dream") replay from the command line: the base writes a replay set itself.

    python -m minimodel.dream --base runs/quickstart/core --out data/dream_en --tokens 20000

A CPT run with replay.source = "generated" does the same before its first step; the set is an
ordinary token-shard set (train split), reused when asked again with the same settings and seed
(minimodel.forgetting.dream).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minimodel.common.distributed import pick_device
from minimodel.common.errors import UserError, cli_entry
from minimodel.forgetting.dream import DreamSettings, check_settings, write_dream_set
from minimodel.models.loading import load


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
