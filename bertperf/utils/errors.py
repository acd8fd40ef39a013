"""User-facing errors.

Anything a user can cause (a missing file, a bad config field, a corrupt shard) raises a
`BertperfError` whose message names the file, the field and the fix. Command-line entry points
catch it through `run_cli` and print one line instead of a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class BertperfError(Exception):
    """An error caused by the user's input; its message says what to fix."""


def run_cli(main: Callable[[], int | None], prog: str) -> int:
    """Call `main()`; turn a BertperfError into `prog: error: ...` on stderr and exit code 2."""
    try:
        rc = main()
    except BertperfError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)
