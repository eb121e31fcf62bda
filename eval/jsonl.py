"""Read the small jsonl files eval takes (held-out text, prompts): one object per line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from minimodel.errors import UserError


def read_utf8(path: Path) -> str:
    """A text file's content; UserError naming the file when it is missing, a directory or not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it first") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def jsonl_records(path: Path, hint: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; bad JSON or a non-object names the line."""
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n} is not JSON ({e}); {hint}") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n} is not a JSON object; {hint}")
        yield n, rec
