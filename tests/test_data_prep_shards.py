"""Shards, manifest, idempotence, atomicity, mixtures, the prepare CLI and its bad-input errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import shards
from data_prep.mixture import mix, split_at_eos
from data_prep.shards import check_prepared, prepare_from_docs, read_tokens, token_dtype
from data_prep.tokenizer import train_tokenizer, weighted_texts
from minimodel.common.errors import UserError
from minimodel.tokenizers.chat import EOS_ID, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
EN = [json.loads(line)["text"] for line in (FIX / "english_web.jsonl").read_text().splitlines()]
KO = [json.loads(line)["text"] for line in (FIX / "korean_1961.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(weighted_texts({"en": EN, "ko": KO}), tmp_path_factory.mktemp("t") / "tok.model", 2000)


def _mtimes(d):
    return {p: p.stat().st_mtime_ns for p in Path(d).rglob("*")}


def test_prepare_roundtrip_and_manifest(tmp_path, tok):
    out = tmp_path / "en"
    m = prepare_from_docs(out, tok, {"train": EN[:60], "val": EN[60:]}, [{"kind": "test"}], shard_tokens=10_000)
    assert m["format"] == "minimodel-shards-v1" and m["dtype"] == "uint16" and m["vocab_size"] == 2000
    assert m["tokenizer"]["sha256"] == shards.file_sha256(out / "tokenizer.model")
    assert (m["tokenizer"]["bos_id"], m["tokenizer"]["eos_id"], m["tokenizer"]["pad_id"], m["eos_id"]) == (2, 3, 0, 3)
    tr = m["splits"]["train"]
    assert len(tr["shards"]) > 1 and sum(s["tokens"] for s in tr["shards"]) == tr["tokens"]
    assert tr["docs"] == 60 and tr["bytes"] == sum(len(t.encode()) for t in EN[:60])
    assert tr["bytes_per_token"] == pytest.approx(tr["bytes"] / tr["tokens"], rel=1e-5)
    toks = read_tokens(out, "train")
    assert (toks == EOS_ID).sum() == 60 and toks[-1] == EOS_ID and toks.max() == m["max_token_id"] < 2000
    sp = load_tokenizer(out / "tokenizer.model")
    assert sp.decode([d.tolist() for d in split_at_eos(toks)]) == EN[:60]
    assert check_prepared(out)["splits"]["val"]["docs"] == 30


def test_dtype_rule():
    assert token_dtype(65535).name == "uint16" and token_dtype(65536).name == "uint32"


def test_two_processes_match_one(tmp_path, tok):
    docs = {"train": EN + KO, "val": KO[:5]}
    a = prepare_from_docs(tmp_path / "a", tok, docs, num_proc=1)
    b = prepare_from_docs(tmp_path / "b", tok, docs, num_proc=2)
    assert np.array_equal(read_tokens(tmp_path / "a", "train"), read_tokens(tmp_path / "b", "train"))
    assert a["splits"] == b["splits"]


def test_idempotent_and_rerun_on_change(tmp_path, tok):
    out = tmp_path / "s"
    m1 = prepare_from_docs(out, tok, {"train": EN[:10], "val": EN[10:12]})
    before = _mtimes(out)
    assert prepare_from_docs(out, tok, {"train": EN[:10], "val": EN[10:12]}) == m1
    assert _mtimes(out) == before  # nothing written
    m2 = prepare_from_docs(out, tok, {"train": EN[:11], "val": EN[10:12]})
    assert m2["splits"]["train"]["docs"] == 11 and m2["fingerprint"] != m1["fingerprint"]
    (out / "train" / "shard_00000.bin").write_bytes(b"")  # damaged output is rebuilt
    prepare_from_docs(out, tok, {"train": EN[:11], "val": EN[10:12]})
    check_prepared(out)


def test_atomic_on_failure(tmp_path, tok, monkeypatch):
    out = tmp_path / "s"
    prepare_from_docs(out, tok, {"train": EN[:5], "val": EN[5:6]})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(shards, "build_manifest", boom)
    with pytest.raises(RuntimeError):
        prepare_from_docs(out, tok, {"train": EN[:9], "val": EN[9:10]})
    with pytest.raises(RuntimeError):
        prepare_from_docs(tmp_path / "new", tok, {"train": EN[:9]})
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old set intact
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temp dirs, no partial new set


def test_empty_corpus_and_mismatch(tmp_path, tok):
    with pytest.raises(UserError, match="empty corpus"):
        prepare_from_docs(tmp_path / "e", tok, {"train": [], "val": []})
    assert not (tmp_path / "e").exists()
    out = tmp_path / "s"
    prepare_from_docs(out, tok, {"train": EN[:5], "val": EN[5:6]})
    other = train_tokenizer(EN, tmp_path / "other.model", 1000)
    with pytest.raises(UserError, match="shard/tokenizer mismatch"):
        check_prepared(out, other)
    (out / "tokenizer.model").write_bytes(other.read_bytes())
    with pytest.raises(UserError, match="shard/tokenizer mismatch"):
        check_prepared(out)


def test_mixture_by_weight(tmp_path, tok):
    prepare_from_docs(tmp_path / "en", tok, {"train": EN[:80], "val": EN[80:]})
    prepare_from_docs(tmp_path / "ko", tok, {"train": KO[:45], "val": KO[45:]})
    m = mix(tmp_path / "mix", [(tmp_path / "ko", 0.75), (tmp_path / "en", 0.25)], seed=1)
    sp = load_tokenizer(tmp_path / "mix" / "tokenizer.model")
    docs = sp.decode([d.tolist() for d in split_at_eos(read_tokens(tmp_path / "mix", "train"))])
    n_ko = sum(len(sp.encode(d)) + 1 for d in docs if d in set(KO))
    n_en = sum(len(sp.encode(d)) + 1 for d in docs if d in set(EN))
    assert n_ko / (n_ko + n_en) == pytest.approx(0.75, abs=0.05)
    assert len(set(d for d in docs if d in set(KO))) == sum(1 for d in docs if d in set(KO))  # no repeats
    assert m["mixture"] == {"ko": 0.75, "en": 0.25}
    assert m["splits"]["val_en"]["docs"] == 10 and m["splits"]["val_ko"]["docs"] == 5
    big = mix(tmp_path / "mix2", [(tmp_path / "ko", 1), (tmp_path / "en", 1)], train_tokens=400_000)
    assert big["splits"]["train"]["tokens"] >= 400_000  # shorter set cycled to reach its share
    check_prepared(tmp_path / "mix2")


def test_mixture_rejects_different_tokenizers(tmp_path, tok):
    other = train_tokenizer(KO, tmp_path / "other.model", 1500)
    prepare_from_docs(tmp_path / "en", tok, {"train": EN[:10]})
    prepare_from_docs(tmp_path / "ko", other, {"train": KO[:10]})
    with pytest.raises(UserError, match="shard/tokenizer mismatch"):
        mix(tmp_path / "mix", [(tmp_path / "en", 1), (tmp_path / "ko", 1)])
    assert not (tmp_path / "mix").exists()


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_prepare_cli_end_to_end(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    recs = [json.loads(line) for line in (FIX / "korean_1961.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(recs[:20]), tmp_path / "ko.parquet")
    out = tmp_path / "set"
    r = _cli("data_prep.prepare", "--out", str(out), "--files", str(FIX / "english_web.jsonl"),
             "--files", str(tmp_path / "ko.parquet"), "--hf", "json", "--hf-data-files",
             str(FIX / "korean_1961.jsonl"), "--vocab-size", "1500", "--val-fraction", "0.1", "--lang", "en+ko")
    assert r.returncode == 0, r.stderr
    m = check_prepared(out)
    src = m["sources"]
    assert [s["kind"] for s in src] == ["files", "files", "hf"]
    assert src[2]["clean"]["duplicate"] == 20  # the parquet rows repeat the first 20 hf rows exactly
    assert m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"] == 90 + 20 + 30
    assert m["tokenizer_report"]["roundtrip_ok"]
    assert m["command"].startswith("python -m data_prep.prepare --out ")


@pytest.mark.parametrize("case", ["empty", "binary", "field", "vocab", "tokenizer"])
def test_prepare_cli_bad_input(tmp_path, case):
    out = tmp_path / "out"
    f = tmp_path / "in.jsonl"
    args = ["data_prep.prepare", "--out", str(out), "--files", str(f), "--vocab-size", "500"]
    f.write_text(json.dumps({"text": "some text here"}) + "\n" + json.dumps({"text": "and more text there"}) + "\n")
    if case == "empty":
        f.write_text("\n")
        want = "empty corpus"
    elif case == "binary":
        f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        want = "binary"
    elif case == "field":
        args += ["--text-field", "content"]
        want = "fields are ['text']"
    elif case == "vocab":
        args[-1] = "100000"
        want = "vocab size 100000 is more than this corpus supports"
    else:
        args += ["--tokenizer", str(tmp_path / "missing.model")]
        want = "tokenizer not found"
    r = _cli(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and want in r.stderr and r.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]  # no partial output


def test_verify_cli_mismatch(tmp_path, tok):
    prepare_from_docs(tmp_path / "s", tok, {"train": EN[:5], "val": EN[5:6]})
    other = train_tokenizer(EN, tmp_path / "o.model", 1000)
    assert _cli("data_prep.verify", str(tmp_path / "s")).returncode == 0
    r = _cli("data_prep.verify", str(tmp_path / "s"), "--tokenizer", str(other))
    assert r.returncode == 2 and "shard/tokenizer mismatch" in r.stderr
