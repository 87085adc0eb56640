"""What the broker answers to a syscall the filter sent it: one pure decision per notification.

The filter notifies the broker of three kinds of call: those it serves
transparently (open, connect, bind... of programs that do not use the client),
the dangerous set privsep never allows, and, in learn mode or with a
``[syscalls] default`` that is not a plain errno, every call outside the
allowlist. Deciding is kept apart from answering (notify.py) and from the
sandbox's lifecycle (a kill), so every branch is a unit test.
"""

from __future__ import annotations

import errno

from privsep._linux import AUDIT_ARCH_X86_64
from privsep._record import Record, setfield

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal


class SyscallRules(Record):
    """What one sandbox's plan says about syscalls the filter hands to the broker."""

    __slots__ = ("dangerous", "default", "learning", "transparent")

    transparent: frozenset[int]  # served by broker/transparent.py
    dangerous: frozenset[int]  # never allowed, whatever the mode
    default: str  # the policy's answer outside the allowlist: "eperm", "enosys" or "kill"
    learning: bool  # privsep learn: allow and record instead of denying

    def __init__(
        self, transparent: frozenset[int], dangerous: frozenset[int], default: str, learning: bool
    ) -> None:
        self._assign(locals())


class Verdict(Record):
    """``serve``: transparent.py answers. ``allow``: learn mode lets it run. ``refuse``: fails with
    ``errno``. ``kill``: the sandbox ends, and the call is never answered (an answer, even an
    error, would let it run on until the kill lands)."""

    __slots__ = ("action", "errno", "name", "why")
    action: Literal["serve", "allow", "refuse", "kill"]
    name: str  # the call as reports and the audit log name it
    errno: int
    why: str  # for a kill: the end of "killed by seccomp: the command called NAME, ..."

    def __init__(
        self, action: Literal["serve", "allow", "refuse", "kill"], name: str, errno: int = 0, why: str = ""
    ) -> None:
        # one per notification: set directly (see privsep/_record.py)
        setfield(self, "action", action)
        setfield(self, "name", name)
        setfield(self, "errno", errno)
        setfield(self, "why", why)

    @property
    def audited(self) -> str | None:
        """The audit log's decision for it; None when transparent.py records it itself."""
        return {"serve": None, "allow": "allow"}.get(self.action, "deny")


#: The verdict on every transparently brokered call: one value, not one per notification.
_SERVE = Verdict("serve", "")


def decide_syscall(nr: int, arch: int, rules: SyscallRules, name_of: Callable[[int], str]) -> Verdict:
    """The answer to syscall ``nr`` of architecture ``arch`` under ``rules``.

    A foreign architecture is dangerous by definition: the filter lets only
    x86_64 calls through, so one arriving here is an attempt around it.
    """
    native = arch == AUDIT_ARCH_X86_64
    if native and nr in rules.transparent:
        return _SERVE
    name = name_of(nr) if native else f"syscall {nr} (arch {arch:#x})"
    dangerous = not native or nr in rules.dangerous
    if rules.learning:
        # Permissive by definition (see notify.py): allowed and recorded, except the dangerous set.
        return Verdict("refuse", name, errno.EPERM) if dangerous else Verdict("allow", name)
    if dangerous:
        return Verdict("kill", name, why="which privsep never allows")
    if rules.default == "kill":
        why = (
            f'which the policy does not allow (its [syscalls] default is "kill"); '
            f'to allow it, add "{name}" to [syscalls] allow'
        )
        return Verdict("kill", name, why=why)
    return Verdict("refuse", name, errno.ENOSYS if rules.default == "enosys" else errno.EPERM)
