"""Text a sandboxed program chose, made safe for the user's terminal.

A path, a message or a traceback can carry escape sequences (ESC, C1
controls) that a terminal would act on: clear the screen, retitle the
window, fake privsep's own lines. Everything privsep prints that came from
a child goes through here. One home, so every printer escapes alike.
"""

from __future__ import annotations


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every character a terminal would interpret escaped (``\\x1b``, ``\\x9b``...).

    ``lines``: keep newlines and tabs (a traceback, a multi-line report).
    """
    kept = "\n\t" if lines else ""
    return "".join(c if c.isprintable() or c in kept else c.encode("unicode_escape").decode() for c in text)
