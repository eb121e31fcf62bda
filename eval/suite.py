"""One model's held-out bits per byte, 2x2 generations and harness tasks, in one process.

    python -m eval.suite runs/quickstart/core --data data/demo_en --data data/demo_ko --ctx 256 \
        --tasks minimodel_cloze_en,minimodel_cloze_ko --stage base

The same as running eval.bpb, eval.generations and eval.harness one after another with these
arguments (each writes its own JSON), less two interpreter starts: profiled in the quick start, each
of those commands spent ~7 of its ~10 s importing torch, transformers, peft and lm-eval.
"""
from __future__ import annotations

import argparse
import sys

from eval import bpb, generations, harness


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eval.suite", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="run dir (the JSONs go to RUN_DIR/eval/)")
    ap.add_argument("--data", action="append", required=True, help="held-out set for eval.bpb (repeatable)")
    ap.add_argument("--ctx", type=int, help="eval.bpb's context")
    ap.add_argument("--tasks", help="eval.harness tasks, comma-separated (none: skip the harness)")
    ap.add_argument("--stage", help="stage label for the report")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    stage = ["--stage", a.stage] if a.stage else []
    bpb.main([a.model, *[x for d in a.data for x in ("--data", d)], *(["--ctx", str(a.ctx)] if a.ctx else []), *stage])
    generations.main([a.model, *stage])
    if a.tasks:
        harness.main([a.model, "--tasks", a.tasks, *stage])


if __name__ == "__main__":
    main()
