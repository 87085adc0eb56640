"""The SEQPACKET channel, on real socketpairs: framing, fds, and what happens to fds we refuse."""

from __future__ import annotations

import _socket
import array
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import closing

import pytest

from privsep import channel
from privsep.channel import Frame, recv, recv_no_fds, send
from privsep.errors import ChannelError, LocalProtocolError, RemoteProtocolError
from privsep.protocol import MAX_FDS, MAX_FRAME
from tests.conftest import is_open, open_fds


@pytest.fixture
def pair() -> Iterator[tuple[_socket.socket, _socket.socket]]:
    a, b = channel.socketpair()
    with closing(a), closing(b):
        yield a, b


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    channel.close_fds((r, w))


def raw_send(sock: _socket.socket, data: bytes, fds: list[int]) -> None:
    """Send bypassing channel.send's checks, as a hostile peer would."""
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])


def test_socketpair_is_seqpacket_and_cloexec(pair: tuple[_socket.socket, _socket.socket]) -> None:
    for sock in pair:
        assert sock.type == socket.SOCK_SEQPACKET
        assert sock.family == socket.AF_UNIX
        assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_frames_keep_their_boundaries(pair: tuple[_socket.socket, _socket.socket]) -> None:
    a, b = pair
    send(a, b"one")
    send(a, b"x" * MAX_FRAME)
    assert recv(b) == Frame(b"one", ())
    assert recv(b) == Frame(b"x" * MAX_FRAME, ())


def test_fds_arrive_working_and_close_on_exec(
    pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    os.set_inheritable(w, True)  # so CLOEXEC on arrival is the receiver's doing, not inherited state
    send(a, b"here", [w])
    frame = recv(b)
    assert frame is not None
    assert frame.data == b"here"
    (received,) = frame.fds
    try:
        assert received not in (r, w)
        assert fcntl.fcntl(received, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(received, b"ping")
        assert os.read(r, 4) == b"ping"
    finally:
        channel.close_fds(frame.fds)


def test_max_fds_fit_in_one_frame(pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int]) -> None:
    a, b = pair
    send(a, b"many", [pipe[0]] * MAX_FDS)
    frame = recv(b)
    assert frame is not None
    try:
        assert len(frame.fds) == MAX_FDS
    finally:
        channel.close_fds(frame.fds)


@pytest.mark.parametrize(("data", "nfds"), [(b"", 0), (b"x" * (MAX_FRAME + 1), 0), (b"x", MAX_FDS + 1)])
def test_send_refuses_what_the_peer_must_refuse(
    pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int], data: bytes, nfds: int
) -> None:
    a, b = pair
    with pytest.raises(LocalProtocolError):
        send(a, data, [pipe[0]] * nfds)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing was sent
        recv(b)


def test_send_to_a_closed_peer_is_a_channel_error() -> None:
    a, b = channel.socketpair()
    b.close()
    with closing(a), pytest.raises(ChannelError):
        send(a, b"anyone?")


def test_recv_after_the_peer_left_frames_unread_is_a_channel_error() -> None:
    a, b = channel.socketpair()
    send(a, b"unread")
    b.close()  # with our frame in its queue: the kernel reports ECONNRESET
    with closing(a), pytest.raises(ChannelError):
        recv(a)


def test_eof_is_none() -> None:
    a, b = channel.socketpair()
    b.close()
    with closing(a):
        assert recv(a) is None
        assert recv_no_fds(a) is None


def test_empty_message_counts_as_eof_and_its_fds_are_closed(
    pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int]
) -> None:
    a, b = pair
    before = open_fds()
    raw_send(a, b"", [pipe[0]] * 3)
    assert recv(b) is None
    assert open_fds() == before


def test_nonblocking_recv_propagates_blocking_io_error(pair: tuple[_socket.socket, _socket.socket]) -> None:
    pair[1].setblocking(False)
    with pytest.raises(BlockingIOError):
        recv(pair[1])


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 3 * MAX_FRAME])
def test_oversized_frame_is_a_violation_and_its_fds_are_closed(
    pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int], size: int
) -> None:
    a, b = pair
    before = open_fds()
    raw_send(a, b"x" * size, [pipe[0]] * 4)
    with pytest.raises(RemoteProtocolError, match="larger than"):
        recv(b)
    assert open_fds() == before


def test_truncated_fds_are_a_violation_and_all_received_fds_are_closed(
    pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int]
) -> None:
    # A peer cannot send more than MAX_FDS fds in one message, which is exactly
    # what fits; credentials the kernel adds first (SO_PASSCRED) take the room
    # of a few fds, so MAX_FDS then overflow the control buffer: MSG_CTRUNC.
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    before = open_fds()
    raw_send(a, b"x", [pipe[0]] * MAX_FDS)
    with pytest.raises(RemoteProtocolError, match="more file descriptors"):
        recv(b)
    assert open_fds() == before


def test_a_ragged_scm_rights_message_closes_every_fd(pipe: tuple[int, int]) -> None:
    # The kernel never sends a partial fd; this checks the parser would not trust one.
    spare = os.dup(pipe[0]), os.dup(pipe[1])
    before = open_fds()
    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    ancillary = [
        (*rights, array.array("i", spare[:1]).tobytes()),
        (*rights, array.array("i", spare[1:]).tobytes() + b"\0"),
    ]
    with pytest.raises(RemoteProtocolError, match="partial"):
        channel._take_fds(ancillary)
    assert open_fds() == before - set(spare)


def test_recv_no_fds_returns_plain_frames(pair: tuple[_socket.socket, _socket.socket]) -> None:
    send(pair[0], b'{"id":1,"op":"ping"}')
    assert recv_no_fds(pair[1]) == b'{"id":1,"op":"ping"}'


def test_recv_no_fds_closes_attached_fds_and_refuses(
    pair: tuple[_socket.socket, _socket.socket], pipe: tuple[int, int]
) -> None:
    a, b = pair
    before = open_fds()
    send(a, b'{"id":1,"op":"ping"}', [pipe[0], pipe[1]])
    with pytest.raises(RemoteProtocolError, match="attached file descriptors"):
        recv_no_fds(b)
    assert open_fds() == before


def test_close_fds_closes_all_even_past_a_bad_one(pipe: tuple[int, int]) -> None:
    spare = os.dup(pipe[0])
    bad = max(open_fds()) + 100  # not open
    channel.close_fds([bad, spare])
    assert not is_open(spare)
