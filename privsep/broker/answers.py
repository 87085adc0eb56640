"""What a service hands back to the loop: an answer (maybe with an fd) or a refusal.

Kept apart from the loop so that every resource module (files, net,
secrets) speaks the same small language, and the loop alone turns it into
frames, audit records and the denial report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privsep._record import Record, setfield
from privsep.errorcodes import ErrorCode

if TYPE_CHECKING:
    from privsep.broker.relay import Relay  # the services that make one import it


class Answer(Record):
    """A successful result; ``fd`` (if any) is sent with the reply, then closed here."""

    __slots__ = ("fd", "relay", "result", "rule")
    result: dict[str, object]
    fd: int | None
    rule: str | None
    relay: Relay | None  # kept and served by the loop once the reply is sent

    def __init__(
        self,
        result: dict[str, object] | None = None,
        fd: int | None = None,
        rule: str | None = None,
        relay: Relay | None = None,
    ) -> None:
        # one per request: set directly (see privsep/_record.py)
        setfield(self, "result", {} if result is None else result)
        setfield(self, "fd", fd)
        setfield(self, "rule", rule)
        setfield(self, "relay", relay)


class Refusal(Exception):
    """A request the broker will not or cannot do; becomes an error reply.

    ``message`` is the broker's own text (policy terms, errno names), never
    the child's input: the reply goes back to the child, and the same text
    goes to the audit log and the denial report.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        allow: str | None = None,
        rule: str | None = None,
        subject: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.allow = allow
        self.rule = rule
        #: What exactly was refused (one path of a rename), for the report at exit;
        #: the child's input, so it never goes into the reply.
        self.subject = subject
        #: The errno behind a failure, when there is one: what an unmodified program
        #: gets from a transparently brokered call (the wire carries the message).
        self.errno = errno


def denied(
    message: str, *, allow: str | None = None, rule: str | None = None, subject: str | None = None
) -> Refusal:
    return Refusal(ErrorCode.DENIED, message, allow=allow, rule=rule, subject=subject)


def failed(message: str, *, rule: str | None = None, errno: int | None = None) -> Refusal:
    return Refusal(ErrorCode.FAILED, message, rule=rule, errno=errno)
