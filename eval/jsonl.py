"""Read the small jsonl files eval takes (held-out text, prompts): one object per line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from minimodel.errors import UserError
from minimodel.jsonfile import read_utf8


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
