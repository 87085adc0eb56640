"""Writing a command's output to stdout, where a closed pipe is not an error.

``privsep policy show python | head`` closes the pipe early: that ends the
output quietly, without a traceback, as it would for any Unix tool.
"""

from __future__ import annotations

import os
import sys

__all__ = ["write"]


def write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush again at exit and complain: point stdout at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
