"""One exception type for bad input, and the CLI wrapper that turns it into exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

from minimodel.errors import UserError


class DataPrepError(UserError, ValueError):
    """Bad input: the message is one line naming the problem and the fix."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a CLI body; a DataPrepError becomes `error: ...` on stderr and exit status 2."""
    try:
        main(argv)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
