"""The Landlock rules of a sandbox, computed in the broker; applied by confine/landlock.py.

The mount namespace already hides everything outside the view; Landlock is
the second, independent wall around it. These are its rules: read (and
list, execute) on the view, what each kernel-served grant's access words
mean, read/write on the device nodes, everything on the private /tmp.
"""

from __future__ import annotations

from privsep import _linux as L
from privsep._record import Record

_READ_FILE = L.ACCESS_FS_READ_FILE | L.ACCESS_FS_EXECUTE
_READ_DIR = _READ_FILE | L.ACCESS_FS_READ_DIR
_DEVICE = L.ACCESS_FS_READ_FILE | L.ACCESS_FS_WRITE_FILE | L.ACCESS_FS_TRUNCATE
_TMP = (
    L.ACCESS_FS_READ_FILE
    | L.ACCESS_FS_WRITE_FILE
    | L.ACCESS_FS_READ_DIR
    | L.ACCESS_FS_REMOVE_DIR
    | L.ACCESS_FS_REMOVE_FILE
    | L.ACCESS_FS_MAKE_DIR
    | L.ACCESS_FS_MAKE_REG
    | L.ACCESS_FS_MAKE_SOCK
    | L.ACCESS_FS_MAKE_FIFO
    | L.ACCESS_FS_MAKE_SYM
    | L.ACCESS_FS_EXECUTE
    | L.ACCESS_FS_REFER
    | L.ACCESS_FS_TRUNCATE
)


class Rule(Record):
    """Access rights beneath one path; the command masks them to what its kernel's ABI handles."""

    __slots__ = ("access", "path")
    path: str
    access: int

    def __init__(self, path: str, access: int) -> None:
        self._assign(locals())


#: What each ``[[files]]`` access word lets the kernel do beneath a kernel-served grant.
#: ``read`` includes execute: a program that can read a file can copy it to /tmp and run it.
#: ``create`` is every change to a directory: make (files, directories, symlinks, fifos,
#: sockets; never devices), remove, and rename or link across directories (REFER).
_GRANT_BITS = {
    "read": L.ACCESS_FS_READ_FILE | L.ACCESS_FS_EXECUTE,
    "list": L.ACCESS_FS_READ_DIR,
    "write": L.ACCESS_FS_WRITE_FILE,
    "truncate": L.ACCESS_FS_TRUNCATE,
    "create": L.ACCESS_FS_MAKE_REG
    | L.ACCESS_FS_MAKE_DIR
    | L.ACCESS_FS_MAKE_SYM
    | L.ACCESS_FS_MAKE_FIFO
    | L.ACCESS_FS_MAKE_SOCK
    | L.ACCESS_FS_REMOVE_FILE
    | L.ACCESS_FS_REMOVE_DIR
    | L.ACCESS_FS_REFER,
}


def grant_access(words: tuple[str, ...], is_dir: bool) -> int:
    """The Landlock rights of a kernel-served grant with these access words."""
    bits = 0
    for word in words:
        bits |= _GRANT_BITS.get(word, 0)
    if not is_dir:  # Landlock refuses directory rights on a file
        bits &= L.ACCESS_FS_READ_FILE | L.ACCESS_FS_EXECUTE | L.ACCESS_FS_WRITE_FILE | L.ACCESS_FS_TRUNCATE
    return bits


def rules_for(
    binds: list[tuple[str, bool, tuple[str, ...]]], devices: list[str], tmp: bool
) -> tuple[Rule, ...]:
    """Rules for a view: (path, is_dir, grant access) binds, device nodes, optional /tmp.

    A bind with no access words is a ``[view]`` read: read, list, execute.
    """
    rules = [Rule("/", L.ACCESS_FS_READ_DIR), Rule("/proc", L.ACCESS_FS_READ_FILE | L.ACCESS_FS_READ_DIR)]
    for path, is_dir, words in binds:
        if words:
            rules.append(Rule(path, grant_access(words, is_dir)))
        else:
            rules.append(Rule(path, _READ_DIR if is_dir else _READ_FILE))
    rules += [Rule(f"/dev/{name}", _DEVICE) for name in devices]
    if tmp:
        rules.append(Rule("/tmp", _TMP))
    return tuple(rules)
