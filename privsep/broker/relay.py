"""A datagram relay: how a child gets UDP to one peer without a UDP socket.

A UDP socket handed to the child could ``sendto`` any address, whatever it
was connected to: the policy would be bypassed. So the child gets one end
of an ``AF_UNIX`` ``SOCK_SEQPACKET`` pair instead, and the broker keeps
a UDP socket connected to the one peer the policy allowed. Every datagram
the child sends goes to that peer. Only datagrams from that peer come back,
because the kernel filters a connected UDP socket's input. This is the
network proxy of Sandbox2, for datagrams.

Both sockets are non-blocking. A datagram that does not fit right now is
dropped, as UDP may drop it anyway, so a flood cannot stall the broker. An
empty datagram cannot cross a SEQPACKET pair (it would read as end of
stream), so it is dropped too.
"""

from __future__ import annotations

import contextlib
import socket

_MAX_DATAGRAM = 65535


class UdpRelay:
    def __init__(self, peer: socket.socket, inside: socket.socket) -> None:
        self.peer = peer  # connected UDP socket, kept by the broker
        self.inside = inside  # the broker's end of the pair given to the child

    @classmethod
    def open(cls, family: int, address: tuple[str, int], timeout_s: float) -> tuple[UdpRelay, int]:
        """Connect a UDP socket to ``address``; return the relay and the child's end (an fd)."""
        peer = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            peer.settimeout(timeout_s)
            peer.connect(address)
            peer.setblocking(False)
            inside, outside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        except BaseException:
            peer.close()
            raise
        inside.setblocking(False)
        return cls(peer, inside), outside.detach()

    def from_child(self) -> bool:
        """Forward what the child sent; False when the child closed its end."""
        try:
            data = self.inside.recv(_MAX_DATAGRAM)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        with contextlib.suppress(OSError):  # full, refused, unreachable: UDP drops it
            self.peer.send(data)
        return True

    def from_peer(self) -> None:
        """Forward what the peer sent (the kernel already dropped other senders)."""
        try:
            data = self.peer.recv(_MAX_DATAGRAM)
        except OSError:  # ECONNREFUSED from an earlier send, or nothing there
            return
        if data:
            with contextlib.suppress(OSError):
                self.inside.send(data)

    def close(self) -> None:
        self.peer.close()
        self.inside.close()
