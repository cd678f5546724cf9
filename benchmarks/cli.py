"""The commands' error contract, written once: a user error is one line on stderr and exit 2; Ctrl-C
says what survived and exits 130; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from typing import Callable


def run_command(body: Callable[[], int], user_errors: tuple[type[BaseException], ...], interrupted: str) -> int:
    try:
        return body()
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
