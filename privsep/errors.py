"""The one exception tree of privsep.

Every error privsep raises on purpose is a ``PrivsepError``; callers catch
that one name, or a branch of it, and never have to parse messages::

    PrivsepError
    ├── PolicyError             a policy file or grant is invalid (names file, field, fix)
    ├── ConfinementError        a confinement layer could not be applied (names the step)
    ├── ChannelError            the socketpair broke (peer gone, frame too large, ...)
    ├── ProtocolError           a message broke the wire protocol
    │   ├── LocalProtocolError      we were about to send something invalid (our bug)
    │   └── RemoteProtocolError     the peer sent something invalid (hostile or buggy peer)
    ├── BrokerError             the broker answered a request with an error
    │   └── DeniedError         the policy denied it (also a PermissionError)
    └── ChildError              a function run by Sandbox.call raised (type, message, traceback as text)

A command that cannot be started inside the sandbox is not an exception: it is
how that run ended (``RunResult.how == "exec_error"``, returncode 126 or 127, as
``privsep run`` exits), since it fails in the child, after confinement.

Messages say what happened and what to do; they never contain secret values,
tracebacks of the other side, or bytes echoed from an untrusted peer.
``tests/unit/test_errors.py`` keeps this drawing true.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ChannelError",
    "ChildError",
    "ConfinementError",
    "DeniedError",
    "LocalProtocolError",
    "PolicyError",
    "PrivsepError",
    "ProtocolError",
    "RemoteProtocolError",
]


#: The exit statuses that are privsep's own (``privsep run``, ``RunResult.returncode``); any other
#: is the command's, or 128+N for signal N. Defined here, the one module every side imports.
EXIT_TIMEOUT = 124
EXIT_PRIVSEP = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class PrivsepError(Exception):
    """Root of every error privsep raises deliberately."""

    #: The exit status ``privsep run`` uses when this error ends a run.
    exit_status: int = EXIT_PRIVSEP


class PolicyError(PrivsepError):
    """A policy could not be loaded: the message names the file, the field and the fix."""


class ConfinementError(PrivsepError):
    """A confinement layer could not be applied; nothing runs without it (fail closed)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"confinement step '{step}' failed: {reason}")
        self.step = step
        self.reason = reason


class ChannelError(PrivsepError):
    """The socketpair between broker and child failed or was closed."""


class ProtocolError(PrivsepError):
    """A message did not follow docs/PROTOCOL.md."""


class LocalProtocolError(ProtocolError):
    """This side was about to send an invalid message: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent an invalid message; the connection cannot be trusted any more."""


class BrokerError(PrivsepError):
    """The broker refused or failed a request; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DeniedError(BrokerError, PermissionError):
    """The policy denied the request; the message names the rule and how to allow it."""

    def __init__(self, message: str, code: str = "denied") -> None:
        BrokerError.__init__(self, code, message)


class ChildError(PrivsepError):
    """The function a ``Sandbox.call`` ran raised an exception in the confined child.

    Only text crosses the boundary (never a pickled exception): the type's
    name, its message and the child's traceback, each bounded. The child is
    untrusted, so treat all three as data, not as an exception to re-raise.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
