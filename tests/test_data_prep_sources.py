"""Readers: every source type, and clear one-line errors on bad input."""
import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.sources import read_files, read_hf, records
from minimodel.common.errors import UserError

FIX = Path(__file__).parent / "fixtures"
EN = FIX / "english_web.jsonl"


def fixture_records(path=EN):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_fixture():
    docs = list(read_files(EN))
    recs = fixture_records()
    assert [d.text for d in docs] == [r["text"] for r in recs]
    assert [d.id for d in docs] == [r["id"] for r in recs]


def test_jsonl_gz_and_glob(tmp_path):
    recs = fixture_records()[:5]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second file"}) + "\n\n")
    docs = list(read_files(str(tmp_path / "*.jsonl*")))
    assert [d.text for d in docs] == [r["text"] for r in recs] + ["second file"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    recs = fixture_records()[:7]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "x.parquet")
    assert [d.text for d in read_files(tmp_path / "x.parquet")] == [r["text"] for r in recs]


def test_txt_units(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("para one\nline two\n\npara two\n", encoding="utf-8")
    assert [d.text for d in read_files(p, txt_unit="file")] == ["para one\nline two\n\npara two\n"]
    assert [d.text for d in read_files(p, txt_unit="paragraph")] == ["para one\nline two", "para two\n"]
    assert [d.text for d in read_files(p, txt_unit="line")] == ["para one", "line two", "para two"]


def test_template(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"q": "Why?", "a": "Because."}) + "\n")
    assert [d.text for d in read_files(p, template="Q: {q}\nA: {a}")] == ["Q: Why?\nA: Because."]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_hf_datasets_path_on_local_files(tmp_path, suffix):
    recs = fixture_records()[:6]
    if suffix == "jsonl":
        path = EN
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = tmp_path / "x.parquet"
        pq.write_table(pa.Table.from_pylist(recs), path)
    docs = list(read_hf(suffix if suffix == "parquet" else "json", data_files=str(path)))
    assert [d.text for d in docs[:6]] == [r["text"] for r in recs]


def test_hf_missing_field_lists_fields():
    with pytest.raises(UserError, match=r"no text field 'content'.*\['id', 'text'\]"):
        next(read_hf("json", data_files=str(EN), text_field="content"))


def test_records_for_sft(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n")
    assert [r for _, r in records(p)] == [{"instruction": "i", "output": "o"}]


# --- bad input: one-line UserError naming the file and the fix
def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_text_field(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"body": "x", "title": "y"}) + "\n")
    with pytest.raises(UserError) as e:
        list(read_files(p))
    assert "['body', 'title']" in _one_line(e) and "a.jsonl:1" in str(e.value)


def test_template_missing_field(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(UserError, match="template field 'a' missing"):
        list(read_files(p, template="{q} {a}"))


def test_binary_file(tmp_path):
    p = tmp_path / "model.jsonl"
    p.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(UserError, match="binary") as e:
        list(read_files(p))
    _one_line(e)
    t = tmp_path / "x.txt"
    t.write_bytes(b"\x00\x01\x02abc")
    with pytest.raises(UserError, match="binary"):
        list(read_files(t))


def test_not_utf8(tmp_path):
    p = tmp_path / "cp949.txt"
    p.write_bytes("대한민국 헌법".encode("cp949"))
    with pytest.raises(UserError, match="not UTF-8.*iconv") as e:
        list(read_files(p))
    _one_line(e)


def test_bad_json_and_non_object(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(UserError, match=r"a.jsonl:2: bad JSON"):
        list(read_files(p))
    p.write_text('["a", "b"]\n')
    with pytest.raises(UserError, match="JSON object"):
        list(read_files(p))


def test_fake_parquet_and_bad_gzip(tmp_path):
    p = tmp_path / "a.parquet"
    p.write_text("not parquet")
    with pytest.raises(UserError, match="not a readable parquet"):
        list(read_files(p))
    g = tmp_path / "a.jsonl.gz"
    g.write_bytes(gzip.compress(b'{"text": "x"}\n' * 100)[:40])
    with pytest.raises(UserError, match="cannot read"):
        list(read_files(g))


def test_no_match_and_unsupported(tmp_path):
    with pytest.raises(UserError, match="no files match"):
        list(read_files(str(tmp_path / "*.jsonl")))
    (tmp_path / "a.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported file type"):
        list(read_files(tmp_path / "a.csv"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from(["jsonl", "txt", "jsonl.gz", "parquet"]))
def test_fuzz_readers_fail_cleanly(tmp_path, data, suffix):
    """Arbitrary bytes either read as documents or raise UserError, never anything else."""
    p = tmp_path / f"f.{suffix}"
    p.write_bytes(data)
    try:
        docs = list(read_files(p))
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert all(isinstance(d.text, str) for d in docs)
