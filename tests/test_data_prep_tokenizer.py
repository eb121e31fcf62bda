"""Tokenizers: exact round-trip, special tokens, weights, report, vocabulary extension."""
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep.tok_report import tokenizer_report
from data_prep.tokenizer import train_tokenizer, weighted_texts
from data_prep.vocab_ext import extend_tokenizer
from minimodel.common.errors import UserError
from minimodel.tokenizers.chat import BOS_ID, CHAT_TOKENS, EOS_ID, PAD_ID, UNK_ID, load_tokenizer

FIX = Path(__file__).parent / "fixtures"
EN = [json.loads(line)["text"] for line in (FIX / "english_web.jsonl").read_text().splitlines()]
KO = [json.loads(line)["text"] for line in (FIX / "korean_1961.jsonl").read_text().splitlines()]
ODD = ["  two  spaces\tand a tab\n\nnew lines  ", "emoji 🙂 and ünïcödé, 中文, العربية", "x" * 5000,
       "1234567890 3.14159", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / f"{request.param}.model"
    return train_tokenizer(weighted_texts({"en": EN, "ko": KO}), path, 2000, request.param)


def test_special_ids_and_chat_pieces(tok):
    sp = load_tokenizer(tok)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert sp.get_piece_size() == 2000
    for t in CHAT_TOKENS:
        assert sp.encode(t, out_type=str)[-1] == t


def test_exact_roundtrip(tok):
    sp = load_tokenizer(tok)
    for t in EN[:10] + KO[:10] + ODD:
        assert sp.decode(sp.encode(t)) == t


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200))
def test_roundtrip_fuzz(tok, s):
    sp = load_tokenizer(tok)
    assert sp.decode(sp.encode(s)) == s


def test_report(tok):
    rep = tokenizer_report(tok, {"en": EN[:20], "ko": KO[:20], "odd": ODD})
    assert rep["roundtrip_ok"] and rep["vocab_size"] == 2000 and len(rep["sha256"]) == 64
    en, ko = rep["languages"]["en"], rep["languages"]["ko"]
    assert en["bytes_per_token"] > 2.5 and ko["bytes_per_token"] > 2.5  # both languages learned
    assert abs(en["tokens"] / en["chars"] - en["tokens_per_char"]) < 1e-3


def test_weights_shape_the_sample():
    s = weighted_texts({"en": EN, "ko": KO}, {"en": 1, "ko": 3}, budget_chars=400_000)
    en_chars = sum(len(t) for t in s if t in set(EN))
    ko_chars = sum(len(t) for t in s if t in set(KO))
    assert 2.5 < ko_chars / en_chars < 3.5  # Korean cycled to reach 3x English
    assert weighted_texts({"en": EN, "ko": KO}, seed=1) == weighted_texts({"en": EN, "ko": KO}, seed=1)
    with pytest.raises(UserError, match="without text"):
        weighted_texts({"en": EN}, {"ko": 1})


def test_vocab_too_big_and_empty(tmp_path):
    with pytest.raises(UserError, match=r"vocab size 50000 is more than this corpus supports; use --vocab-size \d+"):
        train_tokenizer(EN[:3], tmp_path / "t.model", 50000)
    with pytest.raises(UserError, match="empty corpus"):
        train_tokenizer(["", "\n"], tmp_path / "t.model", 1000)
    assert not (tmp_path / "t.model").exists()


def test_vocabulary_extension(tmp_path):
    base = train_tokenizer(EN, tmp_path / "en.model", 1500)
    info = extend_tokenizer(base, KO, tmp_path / "enko.model", new_vocab_size=1500)
    b, e = load_tokenizer(base), load_tokenizer(tmp_path / "enko.model")
    assert info["vocab_size"] == e.get_piece_size() == 1500 + info["added"] and info["added"] > 500
    assert all(b.id_to_piece(i) == e.id_to_piece(i) for i in range(b.get_piece_size()))  # old ids kept
    before = tokenizer_report(base, {"ko": KO, "en": EN[:20]})["languages"]
    after = tokenizer_report(tmp_path / "enko.model", {"ko": KO, "en": EN[:20]})["languages"]
    assert after["ko"]["tokens_per_char"] < before["ko"]["tokens_per_char"] / 3
    assert after["ko"]["roundtrip_ok"] and after["en"]["roundtrip_ok"]
    assert after["en"]["tokens_per_char"] <= before["en"]["tokens_per_char"] * 1.01
    for t in KO[:5] + ODD:
        assert e.decode(e.encode(t)) == t


def test_vocab_too_small(tmp_path):
    with pytest.raises(UserError, match=r"too small for the \d+ characters"):
        train_tokenizer(KO, tmp_path / "t.model", 600)
