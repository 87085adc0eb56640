"""What a sandbox's run leaves behind: the audit log's records and the report at exit.

Every decision the broker makes for a sandbox (a request, a transparently
brokered call, a syscall outside the allowlist, a fork the process limit
refused, a bug of ours that a request reached) is recorded here, once: in the
audit log when there is one, and, when it is a denial, in the sandbox's
``Report`` for the lines ``privsep run`` prints at exit (rule 7: errors teach).
"""

from __future__ import annotations

import sys
import time

from privsep._lazy import lazy_module
from privsep._printable import printable
from privsep._record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from privsep import protocol
    from privsep.broker import answers, audit, services
    from privsep.broker.answers import Answer, Refusal
    from privsep.broker.audit import AuditLog

    class Reported(Protocol):
        """What the recorder needs of a sandbox (the loop's ``Child``)."""

        @property
        def command_pid(self) -> int | None: ...

        @property
        def report(self) -> Report: ...

else:
    audit = lazy_module("privsep.broker.audit", globals())  # only a run with an audit log writes one
    # With the first decision: a sandbox that asks for nothing never needs them.
    answers = lazy_module("privsep.broker.answers", globals())
    services = lazy_module("privsep.broker.services", globals())

_MAX_DENIALS = 256  # kept per sandbox for the report; the audit log has every one
_MAX_TRACEBACKS = 5  # printed in full per broker; later internal errors go to the audit log
_MAX_TRACEBACK_CHARS = 8192


class Denial(Record):
    """A request the policy refused, for the report at exit (never holds a secret value)."""

    __slots__ = ("allow", "message", "op", "rule", "subject", "target")
    op: str
    target: str
    rule: str | None
    message: str
    allow: str | None
    subject: str | None  # the part of the target that was refused (one path of a rename)

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        op: str,
        target: str,
        rule: str | None,
        message: str,
        allow: str | None,
        subject: str | None = None,
    ) -> None:
        self._assign(locals())


class Report:
    """One sandbox's denials and syscall counts, bounded: a flood must not grow the broker.

    A plain class: compared by identity, and a dataclass costs every ``privsep run`` its
    methods' compilation at import (see ``broker/child.py``)."""

    def __init__(self) -> None:
        self.denials: list[Denial] = []  # at most _MAX_DENIALS kept
        self.denials_dropped = 0  # beyond that: counted, not kept
        self.syscall_denials: dict[str, int] = {}  # name -> times denied
        self.syscalls_used: dict[str, int] = {}  # learn mode: name -> times allowed

    def deny(self, denial: Denial) -> None:
        if len(self.denials) < _MAX_DENIALS:
            self.denials.append(denial)
        else:
            self.denials_dropped += 1


class Recorder:
    """Writes each decision to the audit log (when there is one) and each denial to the report."""

    def __init__(self, audit: AuditLog | None) -> None:
        self._audit = audit
        self._internal_errors = 0

    @property
    def auditing(self) -> bool:
        """Whether allowed decisions are recorded (an audit log): without one, none needs an ``Answer``."""
        return self._audit is not None

    def start(self) -> float:
        """When a decision starts, for its latency in the audit log: no clock is read without one."""
        return 0.0 if self._audit is None else time.monotonic()

    def decision(
        self, child: Reported, request: protocol.Request, start: float, answer: Answer | Refusal
    ) -> None:
        """A request or a transparently brokered call, decided and performed.

        An allowed one without an audit log leaves nothing behind: no record is built for it.
        """
        if isinstance(answer, answers.Answer):
            if self._audit is not None:
                latency = int((time.monotonic() - start) * 1e6)
                self._audit.write(
                    audit.Record(
                        child.command_pid, request.op, services.target(request), "allow", answer.rule, latency
                    )
                )
            return
        what = services.target(request)
        from privsep.errorcodes import ErrorCode  # noqa: PLC0415 - once a request is answered

        denied = answer.code is ErrorCode.DENIED
        if denied:
            child.report.deny(
                Denial(request.op, what, answer.rule, answer.message, answer.allow, answer.subject)
            )
        if self._audit is not None:
            latency = int((time.monotonic() - start) * 1e6)
            self._audit.write(
                audit.Record(
                    child.command_pid, request.op, what, "deny" if denied else "error", answer.rule, latency,
                    code=answer.code.value, message=answer.message,
                )
            )  # fmt: skip

    def denial(self, child: Reported, denial: Denial, *, audited_as: str | None = None) -> None:
        """A denial the broker found itself (a limit reached); ``audited_as``: also log it under that rule."""
        child.report.deny(denial)
        if audited_as is not None and self._audit is not None:
            try:
                why = denial.message
                self._audit.write(
                    audit.Record(
                        child.command_pid, denial.op, denial.target, "deny", audited_as, 0, message=why
                    )
                )
            except OSError:
                pass

    def noted(
        self,
        child: Reported,
        op: str,
        what: str,
        decision: str,
        rule: str | None,
        *,
        message: str | None = None,
        denial: Denial | None = None,
    ) -> None:
        """A decision outside a request (the sandbox's resolver and proxies, broker/egress.py):
        audited, and ``denial`` (if any) kept for the report at exit."""
        if denial is not None:
            child.report.deny(denial)
        if self._audit is not None:
            try:
                self._audit.write(
                    audit.Record(child.command_pid, op, what, decision, rule, 0, message=message)
                )
            except OSError:
                pass

    def syscall(self, child: Reported, name: str, decision: str) -> None:
        if self._audit is not None:
            self._audit.write(audit.Record(child.command_pid, "syscall", name, decision, "syscalls", 0))

    def internal_error(self, child: Reported, what: str, exc: BaseException) -> None:
        """A bug of ours met a child's input: log it; the caller answers EIO and carries on (rule 6).

        The traceback may quote the child's input: it is escaped for the terminal, and
        only the first _MAX_TRACEBACKS are printed (a child that found the bug could
        otherwise fill the user's terminal); the audit log records every one.
        """
        self._internal_errors += 1
        if self._internal_errors <= _MAX_TRACEBACKS:
            import traceback  # noqa: PLC0415 - a bug of ours is rare: not on every run's import path

            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            more = (
                " (later ones are counted in the audit log only)"
                if self._internal_errors == _MAX_TRACEBACKS
                else ""
            )
            print(
                f"privsep: internal error while serving {what} for the sandbox of pid {child.command_pid} "
                f"(answered EIO; the broker and every other sandbox carry on); please report it{more}:\n"
                f"{printable(detail[:_MAX_TRACEBACK_CHARS], lines=True)}",
                file=sys.stderr,
                flush=True,
            )
        if self._audit is not None:
            try:
                self._audit.write(
                    audit.Record(child.command_pid, "internal", type(exc).__name__, "error", what, 0)
                )
            except OSError:
                pass
