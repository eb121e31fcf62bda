"""Cleaning and deterministic, content-aligned held-out splits."""
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from data_prep.clean import Cleaner, clean_docs, clean_text
from data_prep.sources import Doc
from data_prep.splits import heldout_units, split_docs


def test_clean_text_nfc_controls_crlf():
    decomposed = unicodedata.normalize("NFD", "한국어 café")
    assert decomposed != "한국어 café"
    assert clean_text(decomposed) == "한국어 café"
    assert clean_text("a\x00b\x07c\x1b[0m\ufeffd\r\ne\tf\x7f\x85") == "abc[0md\ne\tf"


@given(st.text())
def test_clean_text_idempotent_and_control_free(s):
    c = clean_text(s)
    assert clean_text(c) == c
    assert all(ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs") for ch in c)


def test_filters_and_exact_dedup():
    cl = Cleaner(min_chars=3, max_chars=10)
    docs = [Doc("1", "hello"), Doc("2", "hi"), Doc("3", "x" * 11), Doc("4", "hello"), Doc("5", " hello \n"),
            Doc("6", "world")]
    kept = list(clean_docs(docs, cl))
    assert [d.id for d in kept] == ["1", "6"]
    assert cl.stats.as_dict() == {"seen": 6, "kept": 2, "too_short": 1, "too_long": 1, "duplicate": 2}


def _docs(n, lang):
    return [Doc(id=f"{lang}/{i}", text=f"{lang} text {i}", unit=f"1.{i}", lang=lang) for i in range(n)]


def test_split_deterministic_and_order_free():
    docs = _docs(400, "en")
    a = split_docs(docs, 0.1, seed=3)
    b = split_docs(list(reversed(docs)), 0.1, seed=3)
    assert {d.id for d in a["val"]} == {d.id for d in b["val"]}
    assert 20 <= len(a["val"]) <= 60 and len(a["train"]) + len(a["val"]) == 400
    assert {d.id for d in split_docs(docs, 0.1, seed=4)["val"]} != {d.id for d in a["val"]}


def test_parallel_corpora_hold_out_the_same_units():
    en, ko = split_docs(_docs(300, "en"), 0.05), split_docs(_docs(300, "ko"), 0.05)
    assert [d.unit for d in en["val"]] == [d.unit for d in ko["val"]]
    assert set(heldout_units([d.unit for d in _docs(300, "x")], 0.05)) == {d.unit for d in en["val"]}


def test_small_corpus_still_gets_val_and_train():
    s = split_docs(_docs(3, "en"), 0.01)
    assert len(s["val"]) == 1 and len(s["train"]) == 2
    s = split_docs(_docs(3, "en"), 0.99)
    assert len(s["train"]) >= 1
    s = split_docs(_docs(5, "en"), 0.5, val_units=["1.0", "1.4"])
    assert [d.id for d in s["val"]] == ["en/0", "en/4"]
