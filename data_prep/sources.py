"""Document sources: local files/globs (.txt, .jsonl[.gz], .parquet) and Hugging Face datasets.

Every reader yields `Doc`s. `unit` is the key the held-out split hashes: documents that
share a unit (e.g. the same Bible chapter in two languages) land in the same split.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from minimodel.common.errors import UserError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".parquet")
TXT_UNITS = ("auto", "file", "paragraph", "line")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")  # a paragraph break: an empty or whitespace-only line


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    unit: str = ""  # split key; empty means "use id"
    lang: str = ""

    @property
    def key(self) -> str:
        return self.unit or self.id


def text_getter(text_field: str = "text", template: str | None = None) -> Callable[[dict, str], str]:
    """A function record -> text, with an error naming the fields that do exist."""
    def get(rec: dict, where: str) -> str:
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object per record, got {type(rec).__name__}")
        if template is not None:
            try:
                return template.format_map(rec)
            except KeyError as e:
                raise UserError(f"{where}: template field {e} missing; fields are {sorted(rec)}") from None
        if text_field not in rec:
            raise UserError(f"{where}: no text field {text_field!r}; fields are {sorted(rec)} "
                            "(pick one with --text-field or use --template)")
        val = rec[text_field]
        if val is None:
            return ""
        if not isinstance(val, str):
            raise UserError(f"{where}: field {text_field!r} is {type(val).__name__}, not text "
                            "(use --template to format structured records)")
        return val
    return get


def expand(patterns: str | Iterable[str]) -> list[Path]:
    """Files matching the globs, sorted, each pattern required to match something."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[Path] = []
    for pat in patterns:
        pat = str(pat)
        hits = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat]
        hits = [h for h in hits if Path(h).is_file()]
        if not hits:
            raise UserError(f"no files match {pat!r}: check the path or glob")
        files.extend(Path(h) for h in hits)
    return files


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    raise UserError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _open_binary(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _check_head(path: Path, head: bytes) -> None:
    if b"\x00" in head:
        raise UserError(f"{path}: looks like a binary file (NUL bytes); give text, jsonl or parquet")


def _decode(path: Path, data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 (bad byte at offset {e.start}); "
                        f"convert it first, e.g. iconv -f CP949 -t UTF-8 {path}") from None


def txt_parts(text: str, unit: str) -> tuple[list[str], str]:
    """The documents of a .txt file's text, and the unit used. "auto" splits where the file plainly
    holds many documents (blank-line paragraphs, else lines) and keeps a one-line file whole: a
    3,000-line file read as one document gets no held-out split at all."""
    paragraphs = _BLANK_LINE.split(text.replace("\r\n", "\n")) if unit in ("auto", "paragraph") else []
    if unit == "auto":
        if sum(1 for p in paragraphs if p.strip()) >= 2:
            unit = "paragraph"
        elif sum(1 for line in text.splitlines() if line.strip()) >= 2:
            unit = "line"
        else:
            unit = "file"
    if unit == "file":
        return [text], unit
    return (text.splitlines() if unit == "line" else paragraphs), unit


def read_txt(path: Path, unit: str = "auto") -> Iterator[Doc]:
    if unit not in TXT_UNITS:
        raise UserError(f"txt unit {unit!r} unknown; use one of {TXT_UNITS}")
    try:
        with _open_binary(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    _check_head(path, data[:8192])
    parts, used = txt_parts(_decode(path, data, str(path)), unit)
    if unit == "auto" and used != "file":  # say what was decided: the split depends on it
        n = sum(1 for p in parts if p.strip())
        print(f"note: {path}: {n} documents, one per {used} (--txt-unit file|paragraph|line to choose)",
              file=sys.stderr)
    for i, part in enumerate(parts):
        if part.strip():
            yield Doc(id=f"{path.name}:{i}" if used != "file" else path.name, text=part)


def jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for each non-empty line of a .jsonl file (gzip detected by magic bytes)."""
    try:
        f = _open_binary(path)
        with f:
            head = f.peek(8192)[:8192] if hasattr(f, "peek") else b""
            _check_head(path, head)
            for n, raw in enumerate(f, 1):
                where = f"{path}:{n}"
                line = _decode(path, raw, where).strip()
                if not line:
                    continue
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: bad JSON ({e.msg}); one JSON object per line expected") from None
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip
        raise UserError(f"{path}: cannot read ({e})") from None


def parquet_records(path: Path, batch_size: int = 4096) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", rec


def records(patterns: str | Iterable[str]) -> Iterator[tuple[str, dict]]:
    """Raw records of local .jsonl[.gz] / .parquet files (for SFT data)."""
    for path in expand(patterns):
        kind = _suffix(path)
        if kind.startswith(".txt"):
            raise UserError(f"{path}: records need .jsonl or .parquet, not plain text")
        yield from parquet_records(path) if kind == ".parquet" else jsonl_records(path)


def _docs(path: Path, recs: Iterator[tuple[str, dict]], get, id_field: str) -> Iterator[Doc]:
    for n, (where, rec) in enumerate(recs, 1):
        text = get(rec, where)
        rid = rec.get(id_field) if isinstance(rec, dict) else None
        yield Doc(id=str(rid) if rid is not None else f"{path.name}:{n}", text=text)


def read_jsonl(path: Path, get: Callable[[dict, str], str], id_field: str = "id") -> Iterator[Doc]:
    return _docs(path, jsonl_records(path), get, id_field)


def read_parquet(path: Path, get: Callable[[dict, str], str], id_field: str = "id") -> Iterator[Doc]:
    return _docs(path, parquet_records(path), get, id_field)


def read_files(patterns: str | Iterable[str], text_field: str = "text", template: str | None = None,
               txt_unit: str = "auto", id_field: str = "id") -> Iterator[Doc]:
    """Documents from local files; the reader is picked by suffix (gzip is detected by magic bytes)."""
    get = text_getter(text_field, template)
    for path in expand(patterns):
        kind = _suffix(path)
        if kind.startswith(".txt"):
            yield from read_txt(path, txt_unit)
        elif kind == ".parquet":
            yield from read_parquet(path, get, id_field)
        else:
            yield from read_jsonl(path, get, id_field)


def hf_records(path: str, name: str | None = None, split: str = "train", data_files=None,
               streaming: bool = True) -> Iterator[tuple[str, dict]]:
    """(where, record) from a Hugging Face dataset (hub id or a packaged builder such as "json"), streamed."""
    import datasets
    try:
        ds = datasets.load_dataset(path, name=name, split=split, data_files=data_files, streaming=streaming)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise UserError(f"dataset {path!r} (config {name!r}, split {split!r}) cannot be loaded: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    it = iter(ds)
    n = 0
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except Exception as e:  # the builders raise many types (arrow, json, decode) for bad files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"dataset {path!r} row {n}: cannot read ({msg})") from None
        yield f"{path}[{split}] row {n}", rec
        n += 1


def read_hf(path: str, name: str | None = None, split: str = "train", text_field: str = "text",
            template: str | None = None, data_files=None, id_field: str = "id",
            streaming: bool = True) -> Iterator[Doc]:
    """Documents from a Hugging Face dataset, streamed."""
    get = text_getter(text_field, template)
    for n, (where, rec) in enumerate(hf_records(path, name, split, data_files, streaming)):
        rid = rec.get(id_field)
        yield Doc(id=str(rid) if rid is not None else f"{path}:{n}", text=get(rec, where))


def take(docs: Iterable[Doc], max_docs: int | None) -> Iterator[Doc]:
    for i, d in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            return
        yield d


def parse_input_spec(spec: str) -> tuple[str, str, float]:
    """"lang=GLOB[:weight]" -> (lang, glob, weight)."""
    lang, sep, rest = spec.partition("=")
    if not sep or not lang or not rest:
        raise UserError(f"--input {spec!r}: expected LANG=GLOB[:WEIGHT], e.g. ko=data/ko/*.jsonl:2")
    glob_, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            glob_, weight = head, float(tail)
        except ValueError:
            pass
    return lang, glob_, weight
