"""Errors a user can fix, reported as one line instead of a traceback."""
from __future__ import annotations

import functools
import sys

from safetensors import SafetensorError


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message names the problem and the fix."""


def error_gist(e: BaseException) -> str:
    """The gist of a library's error in one line (some span two: "field x:" then the reason)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])[:240] if lines else type(e).__name__


def hf_load_errors() -> tuple:
    """What transformers raises for a config.json or weights it cannot use. Config classes use their
    fields unchecked: a bad value is a ValueError or KeyError, a wrong type a TypeError,
    AttributeError, IndexError or huggingface_hub's StrictDataclassError; a weight of another shape
    is a RuntimeError, a cut safetensors file an OSError or safetensors' own error. An ImportError
    (a missing package, a version skew) is not bad input and keeps its traceback."""
    from huggingface_hub.errors import StrictDataclassError  # the hub client: only on paths that may reach the hub

    return (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError,
            StrictDataclassError, SafetensorError)


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
