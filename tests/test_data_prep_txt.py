"""Plain .txt sources: a file with many documents is split into them by default, and a set whose
held-out split comes out empty (or too small for one window) is refused or flagged with the cause."""
import json

import pytest
from conftest import read_docs

from data_prep import prepare
from data_prep.shards import prepare_from_docs
from data_prep.sources import read_files
from minimodel.common.errors import UserError
from minimodel.data.windows import TokenShards

KO = read_docs("korean_1961.jsonl")  # 50 chapters of real Korean text, one line each


def test_auto_unit_follows_the_file(tmp_path, capsys):
    paras = tmp_path / "paras.txt"
    paras.write_text("para one\nline two\n \npara two\n", encoding="utf-8")  # a whitespace-only line breaks too
    assert [d.text for d in read_files(paras)] == ["para one\nline two", "para two\n"]
    assert "2 documents, one per paragraph" in capsys.readouterr().err
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(KO[:5]) + "\n", encoding="utf-8")
    assert [d.text for d in read_files(lines)] == KO[:5]
    one = tmp_path / "one.txt"
    one.write_text(KO[0] + "\n", encoding="utf-8")
    assert [(d.id, d.text) for d in read_files(one)] == [("one.txt", KO[0] + "\n")]
    assert [d.text for d in read_files(lines, txt_unit="file")] == ["\n".join(KO[:5]) + "\n"]


def _prepare(tmp_path, english_set, *extra):
    src = tmp_path / "ko.txt"
    src.write_text("\n".join(KO) + "\n", encoding="utf-8")
    return prepare.main(["--out", str(tmp_path / "ko"), "--files", str(src), "--tokenizer",
                         str(english_set / "tokenizer.model"), "--val-fraction", "0.1", "--num-proc", "1", *extra])


def test_a_line_per_document_file_gets_a_val_split(tmp_path, english_set):
    _prepare(tmp_path, english_set)
    m = json.loads((tmp_path / "ko" / "manifest.json").read_text())
    assert m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"] == len(KO)
    assert m["splits"]["val"]["docs"] >= 1 and m["splits"]["val"]["tokens"] > 257
    TokenShards(tmp_path / "ko", "val", 256)  # a stage can read it at the default seq_len


def test_one_document_is_refused_naming_txt_unit(tmp_path, english_set):
    with pytest.raises(UserError, match=r"val split is empty: 1 document in all.*--txt-unit line\|paragraph"):
        _prepare(tmp_path, english_set, "--txt-unit", "file")
    assert not (tmp_path / "ko").exists()  # nothing half-written


def test_small_val_split_is_flagged(tmp_path, english_set, capsys):
    # two short lines: one is held out, far fewer tokens than a 257-token window
    (tmp_path / "short.txt").write_text(f"{KO[0][:60]}\n{KO[1][:60]}\n", encoding="utf-8")
    prepare.main(["--out", str(tmp_path / "s"), "--files", str(tmp_path / "short.txt"), "--tokenizer",
                  str(english_set / "tokenizer.model"), "--num-proc", "1"])
    err = capsys.readouterr().err
    assert "WARNING: the val split holds" in err and "--txt-unit line|paragraph" in err


def test_stage_errors_name_the_cause(tmp_path, english_set):
    tok = english_set / "tokenizer.model"
    prepare_from_docs(tmp_path / "empty", tok, {"train": KO[:5], "val": []})
    with pytest.raises(UserError, match=r"'val' of .* is empty \(0 documents, 0 tokens\).*--txt-unit") as e:
        TokenShards(tmp_path / "empty", "val", 256)
    assert "lower data.seq_len" not in str(e.value)  # a shorter window cannot fill an empty split
    prepare_from_docs(tmp_path / "small", tok, {"train": KO[:5], "val": [KO[5][:40]]})
    tokens = json.loads((tmp_path / "small" / "manifest.json").read_text())["splits"]["val"]["tokens"]
    with pytest.raises(UserError, match=rf"holds {tokens} tokens.*set data.seq_len={tokens - 1} or lower"):
        TokenShards(tmp_path / "small", "val", 256)
    assert TokenShards(tmp_path / "small", "val", tokens - 1).n_windows == 1  # and that fix works
