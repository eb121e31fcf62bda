"""The demo's bilingual instruction set: aligned verses, held-out chapters excluded, masks on answers."""
import json
import sqlite3

import pytest
from conftest import read_docs

from data_prep import demo_sft, offline
from data_prep.sft import read_sft
from data_prep.tokenizer import train_tokenizer
from minimodel.tokenizers.chat import load_tokenizer

EN = ["In the beginning.", "The earth was empty.", "God said light.", "There was light.",
      "He saw the light.", "Evening came."]
KO = ["태초에.", "땅이 혼돈하고.", "빛이 있으라.", "빛이 있었고.", "빛을 보시니.", "저녁이 되니라."]


def make_db(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, "
                "vNumber INTEGER, vText TEXT)")
    for code, verses in ((offline.bible_code("en"), EN), (offline.bible_code("ko"), KO)):
        for i, text in enumerate(verses):  # chapters 1.1 (verses 1-3) and 1.2 (verses 1-3)
            con.execute("INSERT INTO bible VALUES (?,?,?,?,?,?)", (i, code, 1, 1 + i // 3, 1 + i % 3, text))
    con.commit()
    con.close()


def test_records_are_aligned_and_skip_heldout(tmp_path):
    make_db(tmp_path / "bible.db")
    verses = demo_sft.aligned_verses(tmp_path / "bible.db", held_units={"1.2"})
    assert [v["en"] for v in verses] == EN[:3] and [v["ko"] for v in verses] == KO[:3]
    recs = demo_sft.build_records(verses, n=3, seed=0)
    for r in recs:
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        src = user.split("\n", 1)[1]
        i = (EN + KO).index(src) % 6
        if "옮기세요" in user:
            assert src in EN and answer == KO[i]
        elif "Translate" in user:
            assert src in KO and answer == EN[i]
        else:  # the following verse, same language, same chapter
            same = EN if src in EN else KO
            assert answer == same[i + 1]
    assert len({r["messages"][0]["content"].split("\n")[0] for r in recs}) == 3  # tasks rotate


def test_cli_builds_a_masked_set(tmp_path, monkeypatch):
    make_db(tmp_path / "bible.db")
    monkeypatch.setattr(offline, "bible_db", lambda cache=None: tmp_path / "bible.db")
    data = tmp_path / "data"
    (data / "demo_ko").mkdir(parents=True)
    (data / "demo_ko" / "heldout.jsonl").write_text(json.dumps({"unit": "1.2", "text": "x"}) + "\n")
    train_tokenizer(read_docs("english_web.jsonl")[:20] + read_docs("korean_1961.jsonl")[:20],
                    data / "tokenizers" / "shared.model", vocab_size=1500)
    demo_sft.main(["--data", str(data), "--examples", "10"])
    sp = load_tokenizer(data / "sft_demo" / "tokenizer.model")
    examples = read_sft(data / "sft_demo", "train") + read_sft(data / "sft_demo", "val")
    assert len(examples) == 3  # only chapter 1.1 is usable
    for ids, mask in examples:
        learned = sp.decode([int(t) for t, m in zip(ids, mask) if m])
        assert learned.endswith("<|im_end|>") and "<|im_start|>" not in learned
        assert learned[:-len("<|im_end|>")] in EN + KO


def test_missing_demo_is_a_clear_error(tmp_path, capsys):
    from minimodel.common.errors import cli_entry
    with pytest.raises(SystemExit) as exit_:  # the CLI's exit status, as python -m data_prep.demo_sft gives it
        cli_entry(demo_sft.main)(["--data", str(tmp_path)])
    assert exit_.value.code == 2
    assert "python -m data_prep.demo" in capsys.readouterr().err
