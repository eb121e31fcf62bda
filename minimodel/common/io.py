"""General file I/O in one place: atomic writes (a crash never leaves half an output behind),
UTF-8 / JSON / TOML reads whose errors name the file and the fix, and file checksums."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:  # the one TOML loader for the package (config.py uses it too): stdlib on 3.11+, tomli on 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


from minimodel.common.errors import UserError

_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a temp directory beside `final`; on success it replaces `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_utf8(path: str | Path, fix: str = "") -> str:
    """A text file's content; otherwise a UserError naming the file (missing, a directory, not UTF-8)
    and `fix` (what the user should do)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); "
                        f"{fix or 'convert it to UTF-8 first'}") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__}){'; ' + fix if fix else ''}") from None


def parse_json_object(text: str, where: str | Path, fix: str) -> dict:
    """The JSON object `text` holds; otherwise a UserError naming `where` it comes from (a file,
    a file:line), what is wrong, and `fix`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{where} holds a JSON {_JSON_TYPES.get(type(doc), type(doc).__name__)}, not an object; {fix}")
    return doc


def read_json_object(path: str | Path, fix: str) -> dict:
    """The JSON object in `path`; otherwise a UserError naming the file, what is wrong, and `fix`
    (what the user should do, e.g. "prepare the set again")."""
    return parse_json_object(read_utf8(path, fix), path, fix)


def read_jsonl_objects(path: str | Path, hint: str):
    """(line number, object) for each non-empty line of a small jsonl file; bad JSON or a
    non-object is a UserError naming the line and `hint` (what each line should hold)."""
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if line.strip():
            yield n, parse_json_object(line, f"{path}:{n}", hint)


def read_toml(path: str | Path, fix: str = "") -> dict:
    """The TOML document in `path` as a dict; otherwise a UserError naming the file (missing,
    not UTF-8, not valid TOML) and `fix` (what the user should do)."""
    text = read_utf8(path, fix)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML ({e}){'; ' + fix if fix else ''}") from None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (weights can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
