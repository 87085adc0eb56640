"""The child's side of the channel: ask the broker, get an answer (and later, fds).

Works in any Python child started by privsep: the channel's fd number is in
``PRIVSEP_FD``. Depends on ``protocol`` and ``channel`` only; the child never
needs policy or broker code. One request at a time per process: the channel
is a single socket, so a lock keeps threads from interleaving replies.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from privsep import channel, protocol
from privsep.errors import ChannelError, RemoteProtocolError

ENV_VAR = "PRIVSEP_FD"


class Client:
    """A connection to the broker over an already-open channel socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._next_id = 0
        self._hello: dict[str, Any] | None = None

    @classmethod
    def from_env(cls) -> Client:
        raw = os.environ.get(ENV_VAR)
        if raw is None or not raw.isdigit():
            raise ChannelError(
                f"{ENV_VAR} is not set: this process was not started by privsep (run it under `privsep run`)"
            )
        sock = socket.socket(fileno=int(raw))
        if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
            sock.detach()
            raise ChannelError(
                f"{ENV_VAR}={raw} is not a privsep channel (not an AF_UNIX SOCK_SEQPACKET socket)"
            )
        os.set_inheritable(sock.fileno(), False)  # programs this child runs do not inherit the channel
        return cls(sock)

    def _request(self, make: Callable[[int], protocol.Request]) -> dict[str, Any]:
        """One round trip; the hello exchange is done first, once."""
        with self._lock:
            self._ensure_hello()
            return self._roundtrip(make)

    def _ensure_hello(self) -> dict[str, Any]:
        if self._hello is None:
            self._hello = self._roundtrip(
                lambda i: protocol.Hello(id=i, versions=tuple(protocol.SUPPORTED_VERSIONS))
            )
        return self._hello

    def _roundtrip(self, make: Callable[[int], protocol.Request]) -> dict[str, Any]:
        self._next_id += 1
        channel.send(self._sock, protocol.encode_request(make(self._next_id)))
        frame = channel.recv(self._sock)
        if frame is None:
            raise ChannelError("the broker closed the channel")
        if frame.fds:
            channel.close_fds(frame.fds)
            raise RemoteProtocolError("the broker attached file descriptors to a reply that takes none")
        return protocol.check_reply(protocol.decode_reply(frame.data), self._next_id)

    def hello(self) -> dict[str, Any]:
        """The broker's answer to ``hello`` (sent automatically before the first request)."""
        with self._lock:
            return dict(self._ensure_hello())

    def ping(self) -> None:
        """A round trip that does nothing: proves the broker is there and answering."""
        self._request(lambda i: protocol.Ping(id=i))


_default: Client | None = None
_default_lock = threading.Lock()


def default() -> Client:
    """The process-wide client on ``PRIVSEP_FD``, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client.from_env()
        return _default


def hello() -> dict[str, Any]:
    return default().hello()


def ping() -> None:
    default().ping()
