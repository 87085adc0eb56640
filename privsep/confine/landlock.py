"""Landlock: the kernel's own check that the child touches only its view.

The mount namespace already hides everything else; Landlock is the second,
independent wall. It also closes what mounts cannot: reopening a brokered fd
through /proc/self/fd with more access, TCP bind/connect on a socket the
child was handed, signals to processes outside the sandbox and connections
to abstract unix sockets outside it (scopes, ABI 6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from privsep import _linux as L
from privsep.errors import ConfinementError

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
#: Minimum ABI: 3 adds TRUNCATE; without it a read-only grant could still truncate.
MIN_ABI = 3


@dataclass(frozen=True)
class Rule:
    path: str
    access: int


def handled_fs(abi: int) -> int:
    bits = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        bits |= L.ACCESS_FS_REFER
    if abi >= 3:
        bits |= L.ACCESS_FS_TRUNCATE
    if abi >= 5:
        bits |= L.ACCESS_FS_IOCTL_DEV
    return bits


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


def apply_landlock(rules: tuple[Rule, ...], abi: int) -> None:
    """Restrict this process (and all it execs) to the rules; raise if impossible."""
    step = "landlock"
    if abi < MIN_ABI:
        raise ConfinementError(
            step,
            f"the kernel offers Landlock ABI {abi}, privsep needs {MIN_ABI} or later "
            "(run `privsep doctor`); refusing to run without it",
        )
    fs = handled_fs(abi)
    net = L.ACCESS_NET_BIND_TCP | L.ACCESS_NET_CONNECT_TCP if abi >= 4 else 0
    scoped = L.SCOPE_ABSTRACT_UNIX_SOCKET | L.SCOPE_SIGNAL if abi >= 6 else 0
    try:
        ruleset = L.landlock_create_ruleset(fs, net, scoped)
    except OSError as exc:
        raise ConfinementError(step, f"landlock_create_ruleset: {exc.strerror}") from None
    try:
        for rule in rules:
            try:
                fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                raise ConfinementError(step, f"opening {rule.path}: {exc.strerror}") from None
            try:
                L.landlock_add_path_rule(ruleset, fd, rule.access & fs)
            except OSError as exc:
                raise ConfinementError(step, f"rule for {rule.path}: {exc.strerror}") from None
            finally:
                os.close(fd)
        try:
            L.landlock_restrict_self(ruleset)
        except OSError as exc:
            raise ConfinementError(step, f"landlock_restrict_self: {exc.strerror}") from None
    finally:
        os.close(ruleset)
