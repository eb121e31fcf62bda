"""Read the small text and JSON files that data sets, run directories and model directories hold."""
from __future__ import annotations

import json
from pathlib import Path

from minimodel.errors import UserError

_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}


def read_utf8(path: str | Path, fix: str = "", error: type[UserError] = UserError) -> str:
    """A text file's content; otherwise `error` naming the file (missing, a directory, not UTF-8)
    and `fix` (what the user should do)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (bad byte at offset {e.start}); "
                    f"{fix or 'convert it to UTF-8 first'}") from None
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or type(e).__name__}){'; ' + fix if fix else ''}") from None


def read_json_object(path: str | Path, fix: str, error: type[UserError] = UserError) -> dict:
    """The JSON object in `path`; otherwise `error` naming the file, what is wrong, and `fix`
    (what the user should do, e.g. "prepare the set again")."""
    text = read_utf8(path, fix, error)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise error(f"{path} holds a JSON {_JSON_TYPES.get(type(doc), type(doc).__name__)}, not an object; {fix}")
    return doc
