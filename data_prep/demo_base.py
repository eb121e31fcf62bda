"""The offline demo's text, tokenised with a pretrained base's own tokenizer.

    python -m data_prep.demo_base --out data --tokenizer path/to/base --name smollm2

Writes OUT/demo_en_NAME and OUT/demo_ko_NAME: the same documents and the same held-out Bible
chapters (heldout.jsonl) as `python -m data_prep.demo`, so a base's bits per byte is measured on
the text the demo's models are measured on. The tokenizer is a Hugging Face directory, a
tokenizer.json, a sentencepiece .model, or a .gguf file (converted once, as a base is).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_prep.demo import load_corpora, write_sets
from minimodel.common.errors import UserError, cli_entry


def base_tokenizer(spec: str) -> Path:
    """The tokenizer a base spec names: a .gguf file is converted (cached) and its directory used."""
    path = Path(spec)
    if path.suffix == ".gguf":
        from minimodel.models.gguf import gguf_to_hf
        return gguf_to_hf(path)
    if not path.exists():
        raise UserError(f"tokenizer not found: {spec} (a base directory, tokenizer.json, .model or .gguf)")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.demo_base", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data")
    p.add_argument("--tokenizer", required=True, help="the base: its directory, tokenizer.json, .model or .gguf")
    p.add_argument("--name", required=True, help="suffix of the sets' names (demo_en_NAME, demo_ko_NAME)")
    p.add_argument("--base-lang", default="en")
    p.add_argument("--new-lang", default="ko")
    p.add_argument("--val-fraction", type=float, default=0.05, help="as data_prep.demo's (same held-out chapters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=2)
    a = p.parse_args(argv)
    tok = base_tokenizer(a.tokenizer)
    splits, sources, held = load_corpora(a.base_lang, a.new_lang, a.val_fraction, a.seed, with_konlpy=True)
    sets = {f"demo_{lang}_{a.name}": (tok, lang) for lang in (a.base_lang, a.new_lang)}
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    print(json.dumps(write_sets(Path(a.out), sets, splits, sources, held, a.val_fraction, a.seed, a.num_proc, log),
                     ensure_ascii=False))


if __name__ == "__main__":
    cli_entry(main)()
