"""Landlock: the kernel's own check that the child touches only its view.

The mount namespace already hides everything else; Landlock is the second,
independent wall. It also closes what mounts cannot: reopening a brokered fd
through /proc/self/fd with more access, TCP bind/connect on a socket the
child was handed, signals to processes outside the sandbox and connections
to abstract unix sockets outside it (scopes, ABI 6). The rules are the
broker's (:mod:`privsep.plan.landlock`); this module applies them in the command.
"""

from __future__ import annotations

import os

from privsep import _linux as L
from privsep.errors import ConfinementError
from privsep.plan.landlock import Rule

#: Minimum ABI: 3 adds TRUNCATE; without it a read-only grant could still truncate.
MIN_ABI = 3


def handled_fs(abi: int) -> int:
    bits = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        bits |= L.ACCESS_FS_REFER
    if abi >= 3:
        bits |= L.ACCESS_FS_TRUNCATE
    if abi >= 5:
        bits |= L.ACCESS_FS_IOCTL_DEV
    return bits


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
