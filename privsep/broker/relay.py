"""A datagram relay: how a child gets UDP to one peer without a UDP socket.

A UDP socket handed to the child could ``sendto`` any address, whatever it
was connected to: the policy would be bypassed. So the child gets one end
of an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair instead, and the broker keeps
a UDP socket connected to the one peer the policy allowed. Every datagram
the child sends goes to that peer. Only datagrams from that peer come back,
because the kernel filters a connected UDP socket's input. This is the
network proxy of Sandbox2, for datagrams. A UDP bind works the same way
(``UdpServerRelay``), with each message framed with its peer's address,
and replies allowed only to peers that wrote first.

Both sockets are non-blocking. A datagram that does not fit right now is
dropped, as UDP may drop it anyway, so a flood cannot stall the broker. An
empty datagram cannot cross a SEQPACKET pair (it would read as end of
stream), so it is dropped too.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import socket
import struct
import termios
from typing import Literal

from privsep.framing import DATAGRAM_FRAMING, MAX_DATAGRAM, decode_datagram, encode_datagram

Side = Literal["relay_child", "relay_peer"]  # which end of a relay: the sandbox's, or the outside's


class _Relay:
    """What both relays share: the broker's UDP socket, and its end of the child's pair."""

    def __init__(self, peer: socket.socket, inside: socket.socket) -> None:
        self.peer = peer  # the UDP socket, kept by the broker
        self.inside = inside  # the broker's end of the pair given to the child

    @staticmethod
    def _pair(peer: socket.socket) -> tuple[socket.socket, int]:
        """A seqpacket pair: ours (non-blocking) and the child's (an fd). Closes ``peer`` on failure."""
        try:
            inside, outside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        except BaseException:
            peer.close()
            raise
        inside.setblocking(False)
        return inside, outside.detach()

    def _from_inside(self, size: int) -> bytes | None:
        """One message from the child; b"" when it closed its end; None when there is none yet."""
        try:
            return self.inside.recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def watched(self) -> tuple[tuple[socket.socket, Side], ...]:
        return ((self.inside, "relay_child"), (self.peer, "relay_peer"))

    def close(self) -> None:
        self.peer.close()
        self.inside.close()


class UdpRelay(_Relay):
    """UDP to the one peer the policy allowed (a connected UDP socket)."""

    @classmethod
    def open(cls, family: int, address: tuple[str, int], timeout_s: float) -> tuple[UdpRelay, int]:
        """Connect a UDP socket to ``address``; return the relay and the child's end (an fd)."""
        peer = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            peer.settimeout(timeout_s)
            peer.connect(address)
            peer.setblocking(False)
        except BaseException:
            peer.close()
            raise
        inside, fd = cls._pair(peer)
        return cls(peer, inside), fd

    def from_child(self) -> bool:
        """Forward what the child sent; False when the child closed its end."""
        data = self._from_inside(MAX_DATAGRAM)
        if data is None:
            return True
        if not data:
            return False
        with contextlib.suppress(OSError):  # full, refused, unreachable: UDP drops it
            self.peer.send(data)
        return True

    def from_peer(self) -> None:
        """Forward what the peer sent (the kernel already dropped other senders)."""
        try:
            data = self.peer.recv(MAX_DATAGRAM)
        except OSError:  # ECONNREFUSED from an earlier send, or nothing there
            return
        if data:
            with contextlib.suppress(OSError):
                self.inside.send(data)


class UdpServerRelay(_Relay):
    """A bound UDP socket kept by the broker; the child answers the peers that wrote to it.

    Messages on the child's end carry one datagram each, framed with the
    peer's address (``protocol.encode_datagram``). The child may send only
    to peers that have sent to this socket first: the most recent
    ``MAX_PEERS`` of them, as a stateful firewall would allow replies. Any
    other destination is dropped and remembered, so the report at exit can
    name it.
    """

    MAX_PEERS = 1024
    MAX_REFUSED = 16

    def __init__(self, peer: socket.socket, inside: socket.socket) -> None:
        super().__init__(peer, inside)
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self.refused: list[tuple[str, int]] = []

    @classmethod
    def open(cls, family: int, address: tuple[str, int]) -> tuple[UdpServerRelay, int]:
        peer = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            peer.bind(address)
        except BaseException:
            peer.close()
            raise
        inside, fd = cls._pair(peer)
        return cls(peer, inside), fd

    def from_child(self) -> bool:
        frame = self._from_inside(MAX_DATAGRAM + DATAGRAM_FRAMING)
        if frame is None:
            return True
        if not frame:
            return False
        decoded = decode_datagram(frame)
        if decoded is None:
            return True  # malformed: dropped, as a broken datagram would be
        destination, payload = decoded
        if destination not in self._seen:
            if destination not in self.refused and len(self.refused) < self.MAX_REFUSED:
                self.refused.append(destination)
            return True
        with contextlib.suppress(OSError):
            self.peer.sendto(payload, destination)
        return True

    def from_peer(self) -> None:
        try:
            payload, sender = self.peer.recvfrom(MAX_DATAGRAM)
        except OSError:
            return
        source = (str(sender[0]).split("%")[0], int(sender[1]))
        self._seen[source] = None
        self._seen.move_to_end(source)
        if len(self._seen) > self.MAX_PEERS:
            self._seen.popitem(last=False)
        with contextlib.suppress(OSError, ValueError):
            self.inside.send(encode_datagram(source, payload))


class _PipeEnd:
    """The broker's read end of an append relay's pipe, as the selector wants it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class AppendRelay:
    """An append-only grant kept by the broker: the child writes into a pipe, the broker appends.

    An ``O_APPEND`` fd in the child's hands promises nothing: ``fcntl(F_SETFL)``
    clears the flag, then ``pwrite`` at offset 0 rewrites the history. So the
    file stays with the broker (opened ``O_APPEND``), and the child gets the
    write end of a pipe: whatever it does to that, the broker's only
    operation on the file is "append these bytes". The child's own file-size
    limit no longer applies to a write the broker makes, so the relay stops
    at ``limit`` bytes, after which the pipe is closed and the child's next
    write fails with EPIPE.
    """

    CHUNK = 65536

    def __init__(self, inside: int, file: int, limit: int, path: str) -> None:
        self.path = path  # for the report
        self.inside = _PipeEnd(inside)
        self._file = file
        self._left = limit
        self.truncated = False  # the child wrote more than the limit

    @classmethod
    def open(cls, file: int, limit: int, path: str) -> tuple[AppendRelay, int]:
        """A relay appending to ``file`` (taken over); returns it and the child's end (an fd)."""
        try:
            read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            os.close(file)
            raise
        # The child's end behaves as an append-only file would: writes wait, O_APPEND shows.
        fcntl.fcntl(write_end, fcntl.F_SETFL, os.O_APPEND)
        return cls(read_end, file, limit, path), write_end

    def watched(self) -> tuple[tuple[_PipeEnd, Side], ...]:
        return ((self.inside, "relay_child"),)

    def from_child(self) -> bool:
        """Append what the child wrote; False when it closed its end (or went over the limit)."""
        try:
            data = os.read(self.inside.fileno(), self.CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        try:
            self._append(data)
        except OSError:
            return False
        return not self.truncated

    def _append(self, data: bytes) -> None:
        if len(data) > self._left:
            data, self.truncated = data[: self._left], True
        view = memoryview(data)
        while view:
            view = view[os.write(self._file, view) :]
        self._left -= len(data)

    def from_peer(self) -> None:
        """Nothing comes back from a file."""

    def close(self) -> None:
        """Append what is in the pipe now (the sandbox may have ended right after writing), then close.

        Only what is queued at this moment, at most a pipe's capacity: the write end may
        still have writers (a relay refused past the bound is closed while the child holds
        its fd), and reading until the pipe is empty kept the loop appending as long as
        they wrote.
        """
        fd = self.inside.fileno()
        if fd >= 0 and self._file >= 0:
            with contextlib.suppress(OSError):
                queued = struct.unpack("=i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]
                while queued > 0 and self._left > 0 and (data := os.read(fd, min(self.CHUNK, queued))):
                    self._append(data)
                    queued -= len(data)
        self.inside.close()
        if self._file >= 0:
            os.close(self._file)
            self._file = -1


Relay = UdpRelay | UdpServerRelay | AppendRelay
