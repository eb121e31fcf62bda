"""Small bilingual data and bases for the CPT / LoRA / SFT tests (built once per session).

Real text: WEB English and the Korean 1961 Bible from tests/fixtures. Sets:
    en, ko        one shared English+Korean tokenizer (1024 pieces)
    en_base       an English-only tokenizer (512 pieces)
    en_ext, ko_ext   that tokenizer extended with Korean pieces (data_prep.vocab_ext)
Bases are minimodel run directories (final/minimodel.json + model.safetensors + tokenizer.model)
holding a tiny model, briefly pretrained on English so the English held-out text means something.
"""
import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import read_docs


def tiny_model_config(vocab: int, tie: bool = True):
    from minimodel.nn.model import model_config_from

    return model_config_from("tiny", vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             ffn_dim=192, max_seq_len=256, tie_embeddings=tie)


def write_native_base(run_dir: Path, model, tokenizer: Path) -> Path:
    import shutil

    from safetensors.torch import save_file

    from minimodel.nn.weights import model_tensors

    final = run_dir / "final"
    final.mkdir(parents=True)
    save_file(model_tensors(model), str(final / "model.safetensors"))
    (final / "minimodel.json").write_text(json.dumps(model.config.to_dict()))
    shutil.copy2(tokenizer, final / "tokenizer.model")
    return run_dir


def pretrain_briefly(model, set_dir: Path, steps: int = 15, seed: int = 0):
    """A few AdamW steps on English windows (seconds), so the base is not random."""
    from minimodel.data.windows import TokenShards, TrainStream

    torch.manual_seed(seed)
    stream = TrainStream(TokenShards(set_dir, "train", 64, model.config.vocab_size), seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, y = stream.next_batch(8)
        model(x, y).backward()
        opt.step()
        opt.zero_grad()
    return model


@functools.cache
def build(root: str) -> dict:
    from data_prep.shards import prepare_from_docs
    from data_prep.tokenizer import train_tokenizer
    from data_prep.vocab_ext import extend_tokenizer
    from minimodel.nn.model import MiniModel

    root = Path(root)
    en, ko = read_docs("english_web.jsonl"), read_docs("korean_1961.jsonl")
    toks = root / "tok"
    toks.mkdir(parents=True)
    train_tokenizer(en + ko, toks / "shared.model", vocab_size=1024)
    train_tokenizer(en, toks / "en.model", vocab_size=512)
    extend_tokenizer(toks / "en.model", ko, toks / "en_ext.model", new_vocab_size=1200, max_new=400)
    out = {"tok_shared": toks / "shared.model", "tok_en": toks / "en.model", "tok_ext": toks / "en_ext.model"}
    for name, tok, docs, lang in [("en", "shared", en, "en"), ("ko", "shared", ko, "ko"),
                                  ("en_base", "en", en, "en"), ("en_ext", "en_ext", en, "en"),
                                  ("ko_ext", "en_ext", ko, "ko")]:
        n_val = 10 if lang == "en" else 6
        prepare_from_docs(root / name, toks / f"{tok}.model", {"train": docs[:-n_val], "val": docs[-n_val:]},
                          sources=[{"name": f"fixture {lang}"}], extra_manifest={"language": lang})
        out[name] = root / name
    torch.manual_seed(0)
    core = pretrain_briefly(MiniModel(tiny_model_config(1024)), out["en"])
    out["core"] = write_native_base(root / "core", core, out["tok_shared"])
    torch.manual_seed(1)
    core_en = pretrain_briefly(MiniModel(tiny_model_config(512)), out["en_base"])
    out["core_en"] = write_native_base(root / "core_en", core_en, out["tok_en"])
    return out


@pytest.fixture(scope="session")
def bilingual(tmp_path_factory) -> dict:
    return build(str(tmp_path_factory.getbasetemp() / "bilingual"))


def stage_overrides(base: Path, data: Path, out: Path, **extra) -> list[str]:
    """Overrides for a seconds-long adapter stage on the tiny bases above."""
    cfg = {"base.path": str(base), "data.path": str(data), "train.out_dir": str(out), "data.seq_len": 64,
           "lora.rank": 8, "lora.alpha": 16, "optim.lr": 2e-3, "optim.warmup_steps": 2,
           "train.steps": 12, "train.micro_batch": 8, "train.log_every": 4, "train.eval_every": 6,
           "train.eval_batches": 2, "train.ckpt_every": 6, "train.progress": False, "train.dtype": "fp32"}
    cfg.update(extra)
    return [f"{k}={v if not isinstance(v, bool) else str(v).lower()}" for k, v in cfg.items()]


def test_fixture_sets_share_and_extend_tokenizers(bilingual):
    """The premises the other tests rely on: the *_ext sets extend the English-only tokenizer."""
    import sentencepiece as spm

    base = spm.SentencePieceProcessor(model_file=str(bilingual["tok_en"]))
    ext = spm.SentencePieceProcessor(model_file=str(bilingual["tok_ext"]))
    assert ext.get_piece_size() > base.get_piece_size() == 512
    assert all(base.id_to_piece(i) == ext.id_to_piece(i) for i in range(512))
    m = json.loads((bilingual["ko_ext"] / "manifest.json").read_text())
    assert m["max_token_id"] >= 512  # Korean text uses the added pieces
