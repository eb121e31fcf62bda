"""Errors a user can fix, reported as one line instead of a traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message names the problem and the fix."""


def error_gist(e: BaseException) -> str:
    """The gist of a library's error in one line (some span two: "field x:" then the reason)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])[:240] if lines else type(e).__name__


def cli_entry(main):
    """Wrap a stage's main(): a UserError prints `error: ...` and exits with status 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
    return wrapper
