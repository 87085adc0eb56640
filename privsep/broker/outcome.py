"""How a sandboxed child ended, and the exit status ``privsep run`` turns it into."""

from __future__ import annotations

from privsep import _signals
from privsep._record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    How = Literal[
        "exited", "signaled", "timeout", "memory", "seccomp", "violation", "setup_error", "exec_error", "lost"
    ]


class Outcome(Record):
    """How a sandbox ended: the status ``privsep run`` exits with, and what to tell a person."""

    __slots__ = ("detail", "exit_code", "how", "returncode", "signal", "syscall")

    how: How
    returncode: int
    """The status ``privsep run`` exits with: the child's own, 128+N for signal N, 124..127."""
    detail: str
    exit_code: int | None
    signal: int | None
    syscall: str | None

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        how: How,
        returncode: int,
        detail: str = "",
        exit_code: int | None = None,
        signal: int | None = None,
        syscall: str | None = None,
    ) -> None:
        self._assign(locals())

    def describe(self) -> str:
        """One line for a person; empty for a plain exit (the status says it all)."""
        if self.how == "exited":
            return ""
        if self.how == "signaled":
            assert self.signal is not None
            extra = (
                " (seccomp: a syscall of a foreign architecture (i386/x32), or one the policy kills)"
                if self.signal == _signals.SIGSYS
                else ""
            )
            return f"the command was killed by {_signals.name(self.signal)}{extra}"
        return self.detail


def memory_limit(memory_mb: int) -> Outcome:
    """The sandbox's cgroup ran out of memory and the whole sandbox was killed (SIGKILL)."""
    return Outcome(
        "memory",
        128 + _signals.SIGKILL,
        detail=f"the sandbox reached its memory limit ({memory_mb} MB) and was killed",
        signal=_signals.SIGKILL,
    )


def from_wait_status(status: int) -> Outcome:
    if status & 0x7F == 0:
        code = (status >> 8) & 0xFF
        return Outcome("exited", code, exit_code=code)
    sig = status & 0x7F
    return Outcome("signaled", 128 + sig, signal=sig)
