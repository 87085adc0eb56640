"""The socketpair between broker and child: the only code that touches it.

One ``SOCK_SEQPACKET`` message is one frame: the kernel keeps message
boundaries, so there is no length prefix to trust and a reader never sees half
a frame. File descriptors travel as ``SCM_RIGHTS`` control messages.

Two rules come from the broker's side (DESIGN.md, "Rules the broker lives by"):
every descriptor that arrives with a frame we refuse is closed before the error
is raised, and received descriptors are close-on-exec from the moment they
exist (``MSG_CMSG_CLOEXEC``), so none leaks into a program the broker starts.

``socket.send_fds``/``recv_fds`` are not used: CPython ignores their flags
argument (gh-107898), and ``MSG_CMSG_CLOEXEC`` is not optional here.

Blocking: ``send`` and ``recv`` follow the socket's mode. Python retries EINTR
itself (PEP 475); on a non-blocking socket ``BlockingIOError`` propagates
unchanged, since the broker's selector loop relies on it.

The sockets are the interpreter's C ones (``_socket``), which ``socket.socket``
only wraps: importing ``socket`` builds an enum for every constant it has, and
that and ``enum`` cost about 2 ms of every warm ``privsep run`` (issue 16).
Every function here takes either kind.
"""

from __future__ import annotations

import _socket
import os
import struct

from privsep.errors import ChannelError, LocalProtocolError, RemoteProtocolError
from privsep.framing import MAX_FDS, MAX_FRAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Frame", "close_fds", "fds_payload", "recv", "recv_no_fds", "send", "socketpair"]

# One descriptor in an SCM_RIGHTS payload: a C int. struct, not array: importing array imports
# collections.abc (it registers itself there), which a warm privsep run does not otherwise need.
_FD = struct.Struct("i")
_FD_SIZE = _FD.size
# Room for MAX_FDS descriptors in one control message: the most a peer can send
# in one sendmsg (SCM_MAX_FD), so MSG_CTRUNC means the peer did something odd.
_ANCILLARY_SPACE = _socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
# Plain ints (``_socket``'s are): ``flags & socket.MSG_TRUNC`` would run the IntFlag's
# Python-level ``__and__`` on every frame.
_MSG_TRUNC, _MSG_CTRUNC = _socket.MSG_TRUNC, _socket.MSG_CTRUNC
_MSG_NOSIGNAL, _MSG_CMSG_CLOEXEC = _socket.MSG_NOSIGNAL, _socket.MSG_CMSG_CLOEXEC
_SOL_SOCKET, _SCM_RIGHTS = _socket.SOL_SOCKET, _socket.SCM_RIGHTS
_TRUNCATED = _MSG_TRUNC | _MSG_CTRUNC
#: Makes a Frame with tuple's own constructor: a NamedTuple's __new__ is a Python-level function.
_new = tuple.__new__


class Frame(tuple[bytes, tuple[int, ...]]):
    """One received message: its bytes and the descriptors it carried (now ours to close).

    A tuple with named parts, as a NamedTuple would be, without importing ``typing`` and
    compiling its fields on every ``privsep run`` (about 3 ms: ``broker/events.py``).
    """

    __slots__ = ()

    def __new__(cls, data: bytes, fds: tuple[int, ...]) -> Frame:
        return tuple.__new__(cls, (data, fds))

    @property
    def data(self) -> bytes:
        return self[0]

    @property
    def fds(self) -> tuple[int, ...]:
        return self[1]


def socketpair() -> tuple[_socket.socket, _socket.socket]:
    """A connected pair of close-on-exec SEQPACKET sockets (``_socket``'s: see the module)."""
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)


def close_fds(fds: Iterable[int]) -> None:
    """Close every descriptor, even if closing one of them fails."""
    for fd in fds:
        # Linux releases the descriptor even when close() reports an error.
        try:
            os.close(fd)
        except OSError:
            pass


def send(sock: _socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one frame, with ``fds`` attached as SCM_RIGHTS (the caller still owns them)."""
    if not data:
        raise LocalProtocolError("refusing to send an empty frame: the peer would read it as end of stream")
    if len(data) > MAX_FRAME:
        raise LocalProtocolError(f"frame of {len(data)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    if len(fds) > MAX_FDS:
        raise LocalProtocolError(f"{len(fds)} file descriptors exceed MAX_FDS ({MAX_FDS}) for one frame")
    try:
        # MSG_NOSIGNAL: a dead peer is an EPIPE error, never a SIGPIPE, whatever the signal disposition.
        if fds:
            sent = sock.sendmsg([data], [(_SOL_SOCKET, _SCM_RIGHTS, fds_payload(fds))], _MSG_NOSIGNAL)
        else:
            sent = sock.send(data, _MSG_NOSIGNAL)
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise ChannelError("the peer closed the channel") from exc
    # SEQPACKET sends a message whole or not at all.
    assert sent == len(data), f"SEQPACKET sent {sent} of {len(data)} bytes"


def fds_payload(fds: Sequence[int]) -> bytes:
    """The SCM_RIGHTS payload that carries ``fds``."""
    return _FD.pack(fds[0]) if len(fds) == 1 else struct.pack(f"{len(fds)}i", *fds)


def _take_fds(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, ...]:
    """The descriptors in the SCM_RIGHTS control messages; raise after closing them if one is ragged.

    Other control messages are ignored: none carries a descriptor unless the
    socket opts in (SO_PASSPIDFD), which this module never does.
    """
    if not ancillary:
        return ()
    if len(ancillary) == 1:  # a reply's one descriptor: no list, no array
        level, kind, payload = ancillary[0]
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS and len(payload) == _FD_SIZE:
            return _FD.unpack(payload)
    fds: list[int] = []
    ragged = False
    for level, kind, payload in ancillary:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            whole = len(payload) - len(payload) % _FD_SIZE
            fds.extend(struct.unpack(f"{whole // _FD_SIZE}i", payload[:whole]))
            ragged = ragged or whole != len(payload)
    if ragged:
        close_fds(fds)
        raise RemoteProtocolError("an SCM_RIGHTS control message held a partial file descriptor")
    return tuple(fds)


def recv(sock: _socket.socket) -> Frame | None:
    """Receive one frame, or None when the peer closed the channel.

    A zero-length message cannot be told apart from end of stream on SEQPACKET,
    so it counts as one (``send`` never produces it). A frame over MAX_FRAME
    bytes or with more descriptors than fit raises RemoteProtocolError after
    closing every descriptor that did arrive.
    """
    try:
        data, ancillary, msg_flags, _ = sock.recvmsg(MAX_FRAME + 1, _ANCILLARY_SPACE, _MSG_CMSG_CLOEXEC)
    except ConnectionResetError as exc:
        # The peer closed with frames of ours still unread.
        raise ChannelError("the peer closed the channel") from exc
    if not msg_flags & _TRUNCATED and 0 < len(data) <= MAX_FRAME:  # frames as they come: no, or one, fd
        if not ancillary:
            return _new(Frame, (data, ()))
        if len(ancillary) == 1:
            level, kind, payload = ancillary[0]
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS and len(payload) == _FD_SIZE:
                return _new(Frame, (data, _FD.unpack(payload)))
    return _frame(data, ancillary, msg_flags)


def _frame(data: bytes, ancillary: list[tuple[int, int, bytes]], msg_flags: int) -> Frame | None:
    """What ``recvmsg`` gave, as ``recv`` returns it (or raises)."""
    fds = _take_fds(ancillary)
    reason = None
    if msg_flags & _MSG_TRUNC or len(data) > MAX_FRAME:
        reason = f"the peer sent a frame larger than {MAX_FRAME} bytes"
    elif msg_flags & _MSG_CTRUNC:
        reason = "the peer attached more file descriptors than a frame may carry"
    if reason is not None:
        close_fds(fds)
        raise RemoteProtocolError(reason)
    if not data:
        close_fds(fds)
        return None
    return Frame(data, fds)


def recv_no_fds(sock: _socket.socket) -> bytes | None:
    """Receive one request frame for the broker, or None at end of stream.

    Requests never carry descriptors; one that does is closed unused (the
    broker never acts on what the child hands it) and breaks the protocol.
    """
    try:
        data, ancillary, msg_flags, _ = sock.recvmsg(MAX_FRAME + 1, _ANCILLARY_SPACE, _MSG_CMSG_CLOEXEC)
    except ConnectionResetError as exc:
        raise ChannelError("the peer closed the channel") from exc
    if not ancillary and not msg_flags & _TRUNCATED and 0 < len(data) <= MAX_FRAME:
        return data  # a request as requests come: what recv would return, without its steps
    frame = _frame(data, ancillary, msg_flags)
    if frame is None:
        return None
    if frame.fds:
        close_fds(frame.fds)
        raise RemoteProtocolError("the child attached file descriptors to a request")
    return frame.data
