"""The reports a sandbox's own processes send the broker over its private control socket.

Init and (until its execve) the command report: the pidfds of init and
command, the seccomp listener fd, the sockets of the sandbox's resolver and
proxies, the first error of any step, the command's stops (with a terminal)
and init's final wait status. Both ends are here, so
the format has one home: :func:`encode_control` runs in the sandbox's
processes (``confine/spawn.py``), :func:`decode_control` in the broker.

The user's program never holds the socket (the command's copy is
close-on-exec), but the broker decodes defensively all the same: a forked
copy of it that misbehaves must not take the broker down.
"""

from __future__ import annotations

import os

from privsep import _jsontext
from privsep._record import Record
from privsep.errors import RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Only the type: the channel's module holds the protocol's bounds, and with them pydantic,
    # which the sandbox's processes (confine/inside.py) never import.
    from privsep.channel import Frame

__all__ = ["FD_KINDS", "KINDS", "MAX_CONTROL_FRAME", "ControlMessage", "decode_control", "encode_control"]

MAX_CONTROL_FRAME = 4096
KINDS = frozenset({"init", "command", "listener", "egress", "error", "exec_error", "exit", "stopped"})
#: The reports that carry exactly one fd (SCM_RIGHTS); every other carries none. An "egress"
#: report's fd is a socket of the sandbox's resolver or proxy, its ``step`` says which.
FD_KINDS = frozenset({"init", "command", "listener", "egress"})
_MAX_STEP = 64
_MAX_REASON = 1024


class ControlMessage(Record):
    """One report from the sandbox's own processes (never from the user's program)."""

    __slots__ = ("errno", "fd", "kind", "reason", "status", "step")
    kind: str
    fd: int | None
    step: str
    reason: str
    status: int
    errno: int

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        kind: str,
        fd: int | None = None,
        step: str = "",
        reason: str = "",
        status: int = 0,
        errno: int = 0,
    ) -> None:
        self._assign(locals())


def encode_control(kind: str, *, step: str = "", reason: str = "", status: int = 0, errno: int = 0) -> bytes:
    """The frame of one report; its fd, for :data:`FD_KINDS`, travels beside it.

    ``step`` and ``reason`` are cut to what the broker keeps, and ``reason``
    further until the frame fits :data:`MAX_CONTROL_FRAME` (JSON escapes can
    make a character six bytes): an error with a long explanation still
    arrives as that error, not as a frame too large.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown control message kind {kind!r}")
    if not (step or reason or status or errno):
        return _PLAIN[kind]
    return _encode(kind, step, reason, status, errno)


def _encode(kind: str, step: str, reason: str, status: int, errno: int) -> bytes:
    body = {"kind": kind, "step": step[:_MAX_STEP], "status": status, "errno": errno}
    reason = reason[:_MAX_REASON]
    while True:
        frame = _jsontext.dumps({**body, "reason": reason}).encode()
        if len(frame) <= MAX_CONTROL_FRAME or not reason:
            return frame
        reason = reason[: len(reason) // 2]


#: The reports that carry nothing but their kind (and perhaps an fd), encoded once, at import:
#: the sandbox's processes send them at every start and inherit the bytes already made.
_PLAIN = {kind: _encode(kind, "", "", 0, 0) for kind in KINDS}


def decode_control(frame: Frame) -> ControlMessage:
    """Parse one control frame; anything unexpected is a RemoteProtocolError (fds closed)."""
    try:
        if len(frame.data) > MAX_CONTROL_FRAME:
            raise ValueError("frame too large")
        obj = _jsontext.loads(frame.data)
        if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
            raise ValueError("unknown kind")
        kind = obj["kind"]
        wants_fd = kind in FD_KINDS
        if len(frame.fds) != (1 if wants_fd else 0):
            raise ValueError("wrong number of fds")
        msg = ControlMessage(
            kind=kind,
            fd=frame.fds[0] if wants_fd else None,
            step=str(obj.get("step", ""))[:_MAX_STEP],
            reason=str(obj.get("reason", ""))[:_MAX_REASON],
            status=int(obj.get("status", 0)),
            errno=int(obj.get("errno", 0)),
        )
    except (ValueError, TypeError, OverflowError) as exc:
        for fd in frame.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        raise RemoteProtocolError(f"bad control message from the sandbox: {exc}") from None
    return msg
