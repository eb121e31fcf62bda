"""Check a prepared set: manifest, shard sizes, token ids < vocab, and the tokenizer's checksum.

python -m data_prep.verify data/demo_ko [--tokenizer other.model]
"""
from __future__ import annotations

import argparse
import json

from data_prep.shards import check_prepared
from minimodel.common.errors import cli_entry


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.verify", description=__doc__.splitlines()[0])
    p.add_argument("set_dir")
    p.add_argument("--tokenizer", default=None, help="a tokenizer meant to read these shards (a sentencepiece "
                   ".model, a tokenizer.json or a model directory)")
    a = p.parse_args(argv)
    m = check_prepared(a.set_dir, a.tokenizer)
    print(json.dumps({"ok": True, "vocab_size": m["vocab_size"],
                      "splits": {s: v["tokens"] for s, v in m["splits"].items()}}))


if __name__ == "__main__":
    cli_entry(main)()
