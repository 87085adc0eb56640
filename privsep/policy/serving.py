"""Who serves a ``[[files]]`` grant: the kernel where it can, the broker where it must.

The kernel is the wall, the broker is the gate. A grant whose access a bind
mount (read-only or read-write) plus Landlock's access rights can express is
bound into the child's view and enforced by the kernel: unmodified programs
then ``stat``, list, ``mkdir``, rename and mmap natively, at native speed.
The broker keeps what needs a decision the kernel cannot make:

- ``append`` without ``write``: an fd opened ``O_APPEND`` loses the flag to
  ``fcntl(F_SETFL)``, so append-only cannot be promised by handing out an fd
  either; the broker serves it and SECURITY.md says what it can keep;
- ``connect`` (unix sockets): Landlock does not govern connecting to a socket;
- an exact (non-recursive) directory: Landlock rights on a directory reach
  everything beneath it;
- ``serve = "broker"``: the user wants a decision and an audit record per open.

This module is pure: it answers from the rule alone. Whether the path exists
on this host (a missing path cannot be bound) is decided when the view is
planned (:mod:`privsep.plan.view`), which falls back to the broker then.
"""

from __future__ import annotations

from privsep.policy.model import Access, FileRule

__all__ = ["WRITING", "broker_reason", "writes"]

#: Access that needs a writable mount when the kernel serves it.
WRITING = frozenset({Access.WRITE, Access.CREATE, Access.TRUNCATE, Access.APPEND})


def writes(rule: FileRule) -> bool:
    """The grant changes files: a kernel-served one is bound read-write."""
    return bool(WRITING & set(rule.access))


def broker_reason(rule: FileRule, *, is_dir: bool) -> str | None:
    """Why the broker, not the kernel, must serve ``rule``; None when the kernel can.

    ``is_dir``: the granted path is a directory on this host (an exact grant of
    a file is kernel-served; of a directory it is not).
    """
    if rule.deny:
        return "a deny rule grants nothing"
    if rule.serve == "broker":
        return 'it says serve = "broker"'
    access = set(rule.access)
    if Access.CONNECT in access:
        return "connecting to a unix socket is decided by the broker (Landlock does not govern it)"
    if Access.APPEND in access and Access.WRITE not in access:
        return "append-only cannot be enforced on a file descriptor (fcntl F_SETFL clears O_APPEND)"
    if is_dir and not rule.recursive:
        return "an exact directory grant: the kernel's rights on a directory reach everything beneath it"
    return None
