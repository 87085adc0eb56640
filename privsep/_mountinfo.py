"""Reading ``/proc/self/mountinfo``'s fields: the one place that undoes its escapes.

The kernel writes a space, a tab, a newline and a backslash in a mount's
path or root as a backslash and three octal digits (``\\040`` for a space),
so that the fields stay separated by spaces. Both readers of mountinfo
(``plan/importpath.py``: where grants reach; ``cgroups``: where the cgroup
hierarchies are mounted) turn them back with :func:`unescape`.
"""

from __future__ import annotations

__all__ = ["unescape"]

_OCTAL = frozenset("01234567")


def unescape(field: str) -> str:
    """``field`` with each ``\\NNN`` (three octal digits) turned into the character it stands for;
    any other backslash is kept as it is."""
    if "\\" not in field:
        return field
    out, at = [], 0
    while at < len(field):
        digits = field[at + 1 : at + 4]
        if field[at] == "\\" and len(digits) == 3 and _OCTAL.issuperset(digits):
            out.append(chr(int(digits, 8)))
            at += 4
        else:
            out.append(field[at])
            at += 1
    return "".join(out)
