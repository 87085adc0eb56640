"""The child-side client against a fake broker driven by hand over a real socketpair.

Replies (and the descriptors they carry) are queued on the broker's end before
the client asks: request ids are sequential, so each reply is known in
advance. Afterwards the broker's end reads what the client sent and checks it
frame by frame, both as JSON and through the real broker-side validation.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import io
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from privsep import channel, client, protocol
from privsep.client import Client
from privsep.errors import BrokerError, ChannelError, DeniedError, RemoteProtocolError
from privsep.protocol import (
    Bind,
    Connect,
    ConnectUnix,
    ErrorCode,
    Listdir,
    Mkdir,
    Open,
    Rename,
    Request,
    Secret,
    Stat,
    Unlink,
    reply_denied,
    reply_error,
    reply_ok,
)
from tests.conftest import open_fds

Reply = Callable[[Request], bytes]
HELLO_RESULT = {"version": 1, "broker": "privsep 9.9", "max_frame": protocol.MAX_FRAME}


def _pair() -> tuple[socket.socket, socket.socket]:
    """channel.socketpair()'s pair (the interpreter's C sockets) as the socket objects a client holds."""
    child_end, broker_end = channel.socketpair()
    return socket.socket(fileno=child_end.detach()), socket.socket(fileno=broker_end.detach())


def cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


class FakeBroker:
    """The broker's end of the channel, driven by the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.proto = protocol.BrokerProtocol("9.9")
        self.expected: list[Request] = []
        self.next_id = 1

    def expect(self, request: Request, reply: Reply, fds: Sequence[int] = (), *, close: bool = True) -> None:
        """Queue the reply to the next request, which must equal ``request`` (its id set here)."""
        request = request.model_copy(update={"id": self.next_id})
        self.next_id += 1
        self.expected.append(request)
        channel.send(self.sock, reply(request), fds)
        if close:  # in flight, the kernel holds its own reference
            channel.close_fds(fds)

    def check(self) -> None:
        """Every expected request arrived, exactly, and nothing else."""
        for request in self.expected:
            frame = channel.recv(self.sock)
            assert frame is not None
            assert frame.fds == ()
            assert json.loads(frame.data) == request.model_dump(mode="json")
            assert self.proto.receive(frame.data) == request
        self.expected.clear()
        self.assert_silent()

    def assert_silent(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(1)
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def pair() -> Iterator[tuple[Client, FakeBroker]]:
    """A client past its hello, and the fake broker on the other end."""
    child_end, broker_end = _pair()
    with child_end, broker_end:
        broker = FakeBroker(broker_end)
        cli = Client(child_end)
        broker.expect(
            protocol.Hello(id=0, versions=protocol.SUPPORTED_VERSIONS), lambda r: reply_ok(r, HELLO_RESULT)
        )
        assert cli.hello() == HELLO_RESULT
        broker.check()
        yield cli, broker


def ok(result: dict[str, Any] | None = None) -> Reply:
    return lambda request: reply_ok(request, result or {})


def error(code: ErrorCode, message: str = "no") -> Reply:
    return lambda request: reply_error(request.id, code, message)


def denied(message: str, allow: str | None) -> Reply:
    return lambda request: reply_denied(request.id, message, allow)


# --- hello ---------------------------------------------------------------------------------------


def test_the_first_request_is_preceded_by_hello() -> None:
    child_end, broker_end = _pair()
    with child_end, broker_end:
        broker = FakeBroker(broker_end)
        broker.expect(protocol.Hello(id=0, versions=(1,)), lambda r: reply_ok(r, HELLO_RESULT))
        broker.expect(Mkdir(id=0, path="/d"), ok())
        Client(child_end).mkdir("/d")
        broker.check()


def test_a_hello_result_with_a_version_not_offered_is_refused() -> None:
    child_end, broker_end = _pair()
    with child_end, broker_end:
        broker = FakeBroker(broker_end)
        broker.expect(
            protocol.Hello(id=0, versions=(1,)),
            lambda r: reply_ok(r, {"version": 2, "broker": "privsep 9", "max_frame": 65536}),
        )
        cli = Client(child_end)
        with pytest.raises(RemoteProtocolError, match="version"):
            cli.ping()
        with pytest.raises(ChannelError):
            cli.ping()


# --- open ----------------------------------------------------------------------------------------

# Wire mode -> the flags the broker opens with (docs/PROTOCOL.md).
BROKER_FLAGS = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
MODES = [
    ("r", "r"),
    ("rt", "r"),
    ("rb", "r"),
    ("r+", "r+"),
    ("r+b", "r+"),
    ("br+", "r+"),
    ("w", "w"),
    ("wt", "w"),
    ("wb", "w"),
    ("w+", "w+"),
    ("w+b", "w+"),
    ("a", "a"),
    ("ab", "a"),
    ("a+", "a+"),
    ("a+b", "a+"),
    ("x", "x"),
    ("xb", "x"),
    ("x+", "x+"),
    ("x+t", "x+"),
    ("+xb", "x+"),
]


def broker_open(path: Path, wire: str) -> int:
    return os.open(path, BROKER_FLAGS[wire] | os.O_CLOEXEC, 0o600)


@pytest.mark.parametrize(("mode", "wire"), MODES)
def test_open_in_every_mode(pair: tuple[Client, FakeBroker], tmp_path: Path, mode: str, wire: str) -> None:
    cli, broker = pair
    path = tmp_path / "f"
    if not wire.startswith("x"):
        path.write_bytes(b"first\n")
    broker.expect(Open(id=0, path=str(path), mode=wire), ok(), [broker_open(path, wire)])  # type: ignore[arg-type]

    binary = "b" in mode
    with cli.open(path, mode) as f:
        broker.check()
        assert f.name == str(path)
        assert cloexec(f.fileno())
        flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
        readable, writable = wire.startswith("r") or "+" in wire, not wire.startswith("r") or "+" in wire
        assert flags & os.O_ACCMODE == (
            os.O_RDWR if "+" in wire else os.O_RDONLY if readable else os.O_WRONLY
        )
        assert bool(flags & os.O_APPEND) == wire.startswith("a")
        assert (f.readable(), f.writable()) == (readable, writable)
        assert isinstance(f, io.BufferedIOBase if binary else io.TextIOWrapper)
        before = ""
        if readable:
            f.seek(0)
            data: Any = f.read()
            before = data.decode() if binary else data
            assert before == ("first\n" if wire in ("r", "r+", "a+") else "")
        if writable:
            more: Any = b"more\n" if binary else "more\n"
            f.write(more)
    expected = "first\n" if wire == "r" else before + "more\n" if readable else "more\n"
    if wire == "a":
        expected = "first\nmore\n"
    assert path.read_text() == expected


def test_open_applies_text_options_locally(pair: tuple[Client, FakeBroker], tmp_path: Path) -> None:
    cli, broker = pair
    path = tmp_path / "f"
    broker.expect(Open(id=0, path=str(path), mode="w"), ok(), [broker_open(path, "w")])
    with cli.open(path, "w", encoding="latin-1", newline="") as f:
        f.write("é\r\n")
    assert path.read_bytes() == b"\xe9\r\n"
    broker.expect(Open(id=0, path=str(path), mode="r"), ok(), [broker_open(path, "r")])
    with cli.open(path, "rb", buffering=0) as raw:
        assert isinstance(raw, io.FileIO)
        assert raw.read() == b"\xe9\r\n"
    broker.check()


@pytest.mark.parametrize(("mode", "wire"), [(m, w) for m, w in MODES if "b" in m])
def test_unbuffered_binary_open_is_what_builtins_open_returns(
    pair: tuple[Client, FakeBroker], tmp_path: Path, mode: str, wire: str
) -> None:
    # The client makes this FileIO itself, without an opener: it must be the one builtins.open makes.
    cli, broker = pair
    path = tmp_path / "f"
    if not wire.startswith("x"):
        path.write_bytes(b"first\n")
    broker.expect(Open(id=0, path=str(path), mode=wire), ok(), [broker_open(path, wire)])  # type: ignore[arg-type]
    with cli.open(path, mode, buffering=0) as got:
        broker.check()
        dup = os.dup(got.fileno())
        with builtins.open(str(path), mode, 0, opener=lambda *_: dup) as ref:
            assert type(got) is type(ref) is io.FileIO
            assert (got.name, got.mode, got.closefd, repr(got)) == (
                ref.name,
                ref.mode,
                ref.closefd,
                repr(ref),
            )
            assert got.tell() == ref.tell() == (len(b"first\n") if wire.startswith("a") else 0)
        assert cloexec(got.fileno())


def test_unbuffered_binary_open_refuses_a_directory(pair: tuple[Client, FakeBroker], tmp_path: Path) -> None:
    cli, broker = pair
    broker.expect(Open(id=0, path=str(tmp_path), mode="r"), ok(), [os.open(tmp_path, os.O_RDONLY)])
    before = open_fds()
    with pytest.raises(RemoteProtocolError, match="directory"):
        cli.open(tmp_path, "rb", buffering=0)
    assert open_fds() == before
    with pytest.raises(ChannelError):
        cli.ping()


def test_relative_and_pathlike_paths_are_made_absolute(
    pair: tuple[Client, FakeBroker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, broker = pair
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("x")
    path = tmp_path / "sub" / "f"
    broker.expect(Open(id=0, path=str(path), mode="r"), ok(), [broker_open(path, "r")])
    with cli.open("sub/../sub/f") as f:
        assert f.read() == "x"
    broker.expect(Stat(id=0, path=str(tmp_path / "sub")), error(ErrorCode.FAILED))
    with pytest.raises(BrokerError):
        cli.stat(Path("sub"))
    broker.check()


@pytest.mark.parametrize(
    "mode", ["", "rw", "rr", "U", "rU", "b", "+", "rbt", "r++", "z", "wx", "r ", "R", "rb+b"]
)
def test_bad_mode_strings_are_refused_before_sending(pair: tuple[Client, FakeBroker], mode: str) -> None:
    cli, broker = pair
    with pytest.raises(ValueError, match="invalid mode"):
        cli.open("/f", mode)
    broker.assert_silent()


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"mode": "rb", "encoding": "utf-8"}, ValueError),
        ({"mode": "wb", "errors": "strict"}, ValueError),
        ({"mode": "rb", "newline": ""}, ValueError),
        ({"mode": "r", "buffering": 0}, ValueError),
        ({"mode": "w", "newline": "x"}, ValueError),
        ({"mode": "w", "encoding": "no-such-codec"}, LookupError),
        ({"mode": 1}, TypeError),
        ({"mode": "r", "buffering": "1"}, TypeError),
        ({"mode": "r", "encoding": b"utf-8"}, TypeError),
    ],
)
def test_bad_open_arguments_are_refused_before_sending(
    pair: tuple[Client, FakeBroker], kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    cli, broker = pair
    with pytest.raises(exc):
        cli.open("/f", **kwargs)
    broker.assert_silent()


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda c: c.open("/a\0b"), ValueError),
        (lambda c: c.stat("\udcff"), ValueError),
        (lambda c: c.listdir(""), FileNotFoundError),
        (lambda c: c.mkdir(b"/d"), TypeError),
        (lambda c: c.unlink("/" + "a" * protocol.MAX_PATH), ValueError),
        (lambda c: c.rename("/a", "/b\0"), ValueError),
        (lambda c: c.connect("h", 0), ValueError),
        (lambda c: c.connect("h", 65536), ValueError),
        (lambda c: c.connect("", 80), ValueError),
        (lambda c: c.connect("h", 80, type="sctp"), ValueError),
        (lambda c: c.connect("h", 80, timeout=0), ValueError),
        (lambda c: c.connect("h", 80, timeout=601), ValueError),
        (lambda c: c.connect("h", "80"), ValueError),
        (lambda c: c.bind("h", 80, backlog=0), ValueError),
        (lambda c: c.bind("h", -1), ValueError),
        (lambda c: c.connect_unix("/s\0"), ValueError),
        (lambda c: c.secret("a/b"), ValueError),
        (lambda c: c.secret_fd("x" * 65), ValueError),
    ],
)
def test_bad_arguments_are_refused_before_sending(
    pair: tuple[Client, FakeBroker], call: Callable[[Client], object], exc: type[Exception]
) -> None:
    cli, broker = pair
    with pytest.raises(exc):
        call(cli)
    broker.assert_silent()


def test_open_refuses_a_descriptor_with_the_wrong_flags(
    pair: tuple[Client, FakeBroker], tmp_path: Path
) -> None:
    cli, broker = pair
    path = tmp_path / "f"
    path.write_text("x")
    broker.expect(Open(id=0, path=str(path), mode="w"), ok(), [broker_open(path, "r")])
    before = open_fds()
    with pytest.raises(RemoteProtocolError, match="flags"):
        cli.open(path, "w")
    assert open_fds() == before
    broker.check()
    with pytest.raises(ChannelError):
        cli.ping()


def test_open_refuses_a_directory(pair: tuple[Client, FakeBroker], tmp_path: Path) -> None:
    cli, broker = pair
    broker.expect(Open(id=0, path=str(tmp_path), mode="r"), ok(), [os.open(tmp_path, os.O_RDONLY)])
    before = open_fds()
    with pytest.raises(RemoteProtocolError, match="directory"):
        cli.open(tmp_path)
    assert open_fds() == before


# --- the other file ops --------------------------------------------------------------------------


def stat_result_of(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {
        "mode": st.st_mode,
        "ino": st.st_ino,
        "dev": st.st_dev,
        "nlink": st.st_nlink,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "atime_ns": st.st_atime_ns,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def test_stat(pair: tuple[Client, FakeBroker], tmp_path: Path) -> None:
    cli, broker = pair
    path = tmp_path / "f"
    path.write_text("12345")
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_600_000_000_987_654_321))
    broker.expect(Stat(id=0, path=str(path)), ok(stat_result_of(path)))
    got, want = cli.stat(path), os.stat(path)
    broker.check()
    assert isinstance(got, os.stat_result)
    assert tuple(got) == tuple(want)  # mode ... size and the three integer times
    for name in ("atime", "mtime", "ctime"):
        assert getattr(got, f"st_{name}") == getattr(want, f"st_{name}")
        assert getattr(got, f"st_{name}_ns") == getattr(want, f"st_{name}_ns")
    assert stat.S_ISREG(got.st_mode)
    assert got.st_size == 5


def test_stat_times_before_the_epoch(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    result = dict.fromkeys(("mode", "ino", "dev", "nlink", "uid", "gid", "size"), 0)
    result |= {"atime_ns": -1, "mtime_ns": -1_500_000_000, "ctime_ns": 2**63 - 1}
    broker.expect(Stat(id=0, path="/p"), ok(result))
    st = cli.stat("/p")
    assert (st[7], st.st_atime, st.st_atime_ns) == (-1, -1 + 999_999_999 * 1e-9, -1)
    assert (st[8], st.st_mtime) == (-2, -2 + 0.5)
    assert st.st_ctime_ns == 2**63 - 1


def test_listdir_mkdir_unlink_rename(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    broker.expect(Listdir(id=0, path="/d"), ok({"names": ["a", "é b", ".hidden"]}))
    broker.expect(Listdir(id=0, path="/empty"), ok({"names": []}))
    broker.expect(Mkdir(id=0, path="/d/new"), ok())
    broker.expect(Unlink(id=0, path="/d/a"), ok())
    broker.expect(Rename(id=0, src="/d/x", dst="/d/y"), ok())
    assert cli.listdir("/d") == ["a", "é b", ".hidden"]
    assert cli.listdir("/empty") == []
    cli.mkdir("/d/new")
    cli.unlink("/d/a")
    cli.rename("/d/x", "/d/y")
    broker.check()


# --- sockets -------------------------------------------------------------------------------------


def test_connect_tcp_returns_the_connected_socket(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        outgoing = socket.create_connection(("127.0.0.1", port))
        outgoing.setblocking(False)  # the broker may leave it so; the client makes it blocking
        broker.expect(
            Connect(id=0, host="127.0.0.1", port=port, timeout_ms=2500),
            ok({"address": ["127.0.0.1", port]}),
            [outgoing.detach()],
        )
        with cli.connect("127.0.0.1", port, timeout=2.5) as sock:
            broker.check()
            assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
            assert sock.getblocking()
            assert sock.getpeername() == ("127.0.0.1", port)
            assert cloexec(sock.fileno())
            conn, _ = listener.accept()
            with conn:
                sock.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_connect_udp_is_a_relayed_seqpacket_socket(pair: tuple[Client, FakeBroker]) -> None:
    """UDP comes as one end of a unix seqpacket pair the broker relays (never a UDP socket)."""
    cli, broker = pair
    relay_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with relay_end:
        broker.expect(
            Connect(id=0, host="localhost", port=53, type="udp"),
            ok({"address": ["127.0.0.1", 53]}),
            [child_end.detach()],
        )
        with cli.connect("localhost", 53, type="udp") as sock:
            assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.send(b"datagram")
            assert relay_end.recv(100) == b"datagram"
    broker.check()


def test_connect_udp_refuses_a_real_udp_socket(pair: tuple[Client, FakeBroker]) -> None:
    """A UDP socket could reach any address: the client does not accept one for a UDP connect."""
    cli, broker = pair
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    broker.expect(
        Connect(id=0, host="localhost", port=53, type="udp"),
        ok({"address": ["127.0.0.1", 53]}),
        [udp.detach()],
    )
    before = open_fds()
    with pytest.raises(RemoteProtocolError, match="wrong family or type"):
        cli.connect("localhost", 53, type="udp")
    assert open_fds() == before


def test_connect_unix(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        broker.expect(ConnectUnix(id=0, path="/run/app.sock"), ok(), [theirs.detach()])
        with cli.connect_unix("/run/app.sock") as sock:
            assert sock.family == socket.AF_UNIX
            assert cloexec(sock.fileno())
            sock.sendall(b"hi")
            assert ours.recv(2) == b"hi"
    broker.check()


def test_bind_returns_a_listening_socket(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    server = socket.create_server(("127.0.0.1", 0), backlog=5)
    port = server.getsockname()[1]
    broker.expect(
        Bind(id=0, host="127.0.0.1", port=0, backlog=5),
        ok({"address": ["127.0.0.1", port]}),
        [server.detach()],
    )
    with cli.bind("127.0.0.1", 0, backlog=5) as sock:
        broker.check()
        assert sock.getsockname() == ("127.0.0.1", port)
        assert cloexec(sock.fileno())
        with socket.create_connection(("127.0.0.1", port)) as peer:
            conn, _ = sock.accept()
            with conn:
                peer.sendall(b"x")
                assert conn.recv(1) == b"x"


def test_bind_udp_is_a_relay_with_framed_datagrams(pair: tuple[Client, FakeBroker]) -> None:
    """A UDP bind gives datagrams framed with the peer's address, over the broker's relay."""
    cli, broker = pair
    relay_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    broker.expect(
        Bind(id=0, host="127.0.0.1", port=5353, type="udp"),
        ok({"address": ["127.0.0.1", 5353]}),
        [child_end.detach()],
    )
    with relay_end, cli.bind("127.0.0.1", 5353, type="udp") as sock:
        assert sock.getsockname() == ("127.0.0.1", 5353)
        relay_end.send(protocol.encode_datagram(("10.1.2.3", 4000), b"query"))
        assert sock.recvfrom() == (b"query", ("10.1.2.3", 4000))
        assert sock.sendto(b"answer", ("10.1.2.3", 4000)) == 6
        assert protocol.decode_datagram(relay_end.recv(100)) == (("10.1.2.3", 4000), b"answer")
    broker.check()


def test_bind_udp_refuses_a_real_udp_socket(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    broker.expect(
        Bind(id=0, host="127.0.0.1", port=5353, type="udp"),
        ok({"address": ["127.0.0.1", 5353]}),
        [udp.detach()],
    )
    with pytest.raises(RemoteProtocolError, match="wrong family or type"):
        cli.bind("127.0.0.1", 5353, type="udp")


def test_bind_refuses_a_tcp_socket_that_is_not_listening(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    broker.expect(Bind(id=0, host="127.0.0.1", port=0), ok({"address": ["127.0.0.1", 1]}), [bound.detach()])
    before = open_fds()
    with pytest.raises(RemoteProtocolError, match="not listening"):
        cli.bind("127.0.0.1", 0)
    assert open_fds() == before


@pytest.mark.parametrize("kind", ["pipe", "unix", "udp"])
def test_connect_refuses_a_descriptor_of_the_wrong_kind(pair: tuple[Client, FakeBroker], kind: str) -> None:
    cli, broker = pair
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        fd = r
    else:
        sock = socket.socket(socket.AF_UNIX) if kind == "unix" else socket.socket(type=socket.SOCK_DGRAM)
        fd = sock.detach()
    broker.expect(Connect(id=0, host="h", port=1), ok({"address": ["127.0.0.1", 1]}), [fd])
    before = open_fds()
    with pytest.raises(RemoteProtocolError):
        cli.connect("h", 1)
    assert open_fds() == before
    with pytest.raises(ChannelError):
        cli.ping()


# --- secrets -------------------------------------------------------------------------------------


def sealed_memfd(data: bytes, *, seals: int | None = None, readonly: bool = True) -> int:
    """A memfd as the broker makes one: written, sealed, reopened read-only."""
    memfd = os.memfd_create("secret", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(memfd, data)
    if seals is None:
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, seals)
    if not readonly:
        return memfd
    fd = os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY | os.O_CLOEXEC)
    os.close(memfd)
    return fd


def test_secret_reads_the_memfd_and_closes_it(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    value = bytes(range(256)) * 300  # more than one read's worth
    broker.expect(Secret(id=0, name="tls.key-1"), ok({"size": len(value)}), [sealed_memfd(value)])
    before = open_fds()
    assert cli.secret("tls.key-1") == value
    assert open_fds() == before
    broker.expect(Secret(id=0, name="empty"), ok({"size": 0}), [sealed_memfd(b"")])
    assert cli.secret("empty") == b""
    broker.check()


def test_secret_fd_hands_over_the_memfd(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    broker.expect(Secret(id=0, name="token"), ok({"size": 3}), [sealed_memfd(b"abc")])
    fd = cli.secret_fd("token")
    try:
        assert cloexec(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.pread(fd, 10, 0) == b"abc"
    finally:
        os.close(fd)
    broker.check()


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (lambda: sealed_memfd(b"abc", seals=fcntl.F_SEAL_SEAL), 3),
        (lambda: sealed_memfd(b"abc", readonly=False), 3),
        (lambda: sealed_memfd(b"abc"), 4),
        (lambda: os.open("/dev/null", os.O_RDONLY), 0),
    ],
    ids=["unsealed", "writable", "wrong-size", "not-a-memfd"],
)
def test_secret_refuses_a_descriptor_that_does_not_fit(
    pair: tuple[Client, FakeBroker], make: Callable[[], int], size: int
) -> None:
    cli, broker = pair
    broker.expect(Secret(id=0, name="token"), ok({"size": size}), [make()])
    before = open_fds()
    with pytest.raises(RemoteProtocolError):
        cli.secret("token")
    assert open_fds() == before


# --- errors --------------------------------------------------------------------------------------

DENIALS: list[tuple[Callable[[Client], object], Request, str, str]] = [
    (
        lambda c: c.open("/srv/data/x", "w"),
        Open(id=0, path="/srv/data/x", mode="w"),
        "--allow-write",
        "open('/srv/data/x', 'w'): files[0] (/srv/data) grants read, list; write was needed. "
        "Re-run with --allow-write=/srv/data/x",
    ),
    (
        lambda c: c.open("/my dir/f", "rb"),
        Open(id=0, path="/my dir/f", mode="r"),
        "--allow-read",
        "open('/my dir/f', 'rb'): no rule grants it. Re-run with '--allow-read=/my dir/f'",
    ),
    (
        lambda c: c.stat("/etc/shadow"),
        Stat(id=0, path="/etc/shadow"),
        "--allow-read",
        "stat('/etc/shadow'): no rule grants it. Re-run with --allow-read=/etc/shadow",
    ),
    (
        lambda c: c.listdir("/srv"),
        Listdir(id=0, path="/srv"),
        "--allow-read",
        "listdir('/srv'): no rule grants it. Re-run with --allow-read=/srv",
    ),
    (
        lambda c: c.mkdir("/srv/new"),
        Mkdir(id=0, path="/srv/new"),
        "--allow-write",
        "mkdir('/srv/new'): no rule grants it. Re-run with --allow-write=/srv/new",
    ),
    (
        lambda c: c.unlink("/srv/f"),
        Unlink(id=0, path="/srv/f"),
        "--allow-write",
        "unlink('/srv/f'): no rule grants it. Re-run with --allow-write=/srv/f",
    ),
    (
        lambda c: c.rename("/a", "/b"),
        Rename(id=0, src="/a", dst="/b"),
        "--allow-write",
        "rename('/a', '/b'): no rule grants it. Re-run with --allow-write=/a --allow-write=/b",
    ),
    (
        lambda c: c.connect_unix("/run/s"),
        ConnectUnix(id=0, path="/run/s"),
        "--allow-write",
        "connect_unix('/run/s'): no rule grants it. Re-run with --allow-write=/run/s",
    ),
    (
        lambda c: c.connect("db.internal", 5432),
        Connect(id=0, host="db.internal", port=5432),
        "--allow-connect",
        "connect('db.internal', 5432, type='tcp'): no rule grants it. "
        "Re-run with --allow-connect=db.internal:5432",
    ),
    (
        lambda c: c.connect("::1", 53, type="udp"),
        Connect(id=0, host="::1", port=53, type="udp"),
        "--allow-connect",
        "connect('::1', 53, type='udp'): no rule grants it. Re-run with '--allow-connect=[::1]:53/udp'",
    ),
    (
        lambda c: c.bind("0.0.0.0", 443),  # noqa: S104
        Bind(id=0, host="0.0.0.0", port=443),  # noqa: S104
        "--allow-bind",
        "bind('0.0.0.0', 443, type='tcp'): no rule grants it. Re-run with --allow-bind=0.0.0.0:443",
    ),
    (
        lambda c: c.secret("token"),
        Secret(id=0, name="token"),
        "--secret",
        "secret('token'): no rule grants it. Re-run with --secret=token=env:VAR",
    ),
    (
        lambda c: c.secret_fd("token"),
        Secret(id=0, name="token"),
        "--secret",
        "secret('token'): no rule grants it. Re-run with --secret=token=env:VAR",
    ),
]


@pytest.mark.parametrize(("call", "request_", "allow", "message"), DENIALS)
def test_denials_explain_themselves(
    pair: tuple[Client, FakeBroker],
    call: Callable[[Client], object],
    request_: Request,
    allow: str,
    message: str,
) -> None:
    cli, broker = pair
    # The broker's reason is the message between the call and the hint.
    reason = message.split(": ", 1)[1].split(". Re-run", 1)[0]
    broker.expect(request_, denied(reason, allow))
    with pytest.raises(DeniedError) as info:
        call(cli)
    assert str(info.value) == message
    assert isinstance(info.value, PermissionError)
    assert info.value.code == "denied"
    broker.expect(protocol.Ping(id=0), ok())
    cli.ping()  # the channel stays usable
    broker.check()


def test_a_denial_without_a_flag_has_no_hint(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    broker.expect(Stat(id=0, path="/proc/1"), denied("files[2] denies it.", None))
    with pytest.raises(DeniedError) as info:
        cli.stat("/proc/1")
    assert str(info.value) == "stat('/proc/1'): files[2] denies it."


@pytest.mark.parametrize(
    ("call", "request_", "filenames"),
    [
        (lambda c: c.open("/nope"), Open(id=0, path="/nope", mode="r"), ("/nope", None)),
        (lambda c: c.stat("/nope"), Stat(id=0, path="/nope"), ("/nope", None)),
        (lambda c: c.listdir("/nope"), Listdir(id=0, path="/nope"), ("/nope", None)),
        (lambda c: c.mkdir("/nope/d"), Mkdir(id=0, path="/nope/d"), ("/nope/d", None)),
        (lambda c: c.unlink("/nope"), Unlink(id=0, path="/nope"), ("/nope", None)),
        (lambda c: c.rename("/a", "/b"), Rename(id=0, src="/a", dst="/b"), ("/a", "/b")),
        (lambda c: c.connect_unix("/s"), ConnectUnix(id=0, path="/s"), ("/s", None)),
    ],
)
def test_not_found_is_file_not_found_error(
    pair: tuple[Client, FakeBroker],
    call: Callable[[Client], object],
    request_: Request,
    filenames: tuple[str, str | None],
) -> None:
    cli, broker = pair
    broker.expect(request_, error(ErrorCode.NOT_FOUND, "no such file or directory"))
    with pytest.raises(FileNotFoundError) as info:
        call(cli)
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror == "no such file or directory"
    assert (info.value.filename, info.value.filename2) == filenames
    broker.check()


@pytest.mark.parametrize(
    ("call", "request_"),
    [
        (lambda c: c.connect("nx.example", 80), Connect(id=0, host="nx.example", port=80)),
        (lambda c: c.secret("gone"), Secret(id=0, name="gone")),
    ],
)
def test_not_found_off_the_filesystem_is_a_broker_error(
    pair: tuple[Client, FakeBroker], call: Callable[[Client], object], request_: Request
) -> None:
    cli, broker = pair
    broker.expect(request_, error(ErrorCode.NOT_FOUND, "name does not resolve"))
    with pytest.raises(BrokerError) as info:
        call(cli)
    assert not isinstance(info.value, OSError)
    assert info.value.code == "not_found"


@pytest.mark.parametrize("code", [ErrorCode.FAILED, ErrorCode.UNSUPPORTED, ErrorCode.INTERNAL])
def test_other_codes_are_broker_errors(pair: tuple[Client, FakeBroker], code: ErrorCode) -> None:
    cli, broker = pair
    broker.expect(Mkdir(id=0, path="/d"), error(code, "exists"))
    with pytest.raises(BrokerError) as info:
        cli.mkdir("/d")
    assert not isinstance(info.value, DeniedError)
    assert (info.value.code, str(info.value)) == (code.value, "mkdir('/d'): exists")
    broker.expect(protocol.Ping(id=0), ok())
    cli.ping()  # still usable
    broker.check()


def test_an_invalid_reply_code_breaks_the_channel(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    broker.expect(
        Mkdir(id=0, path="/d"), lambda r: reply_error(None, ErrorCode.INVALID, "protocol violation")
    )
    with pytest.raises(BrokerError) as info:
        cli.mkdir("/d")
    assert info.value.code == "invalid"
    with pytest.raises(ChannelError):
        cli.ping()


# --- descriptors the reply should or should not carry ----------------------------------------------


def pipe_fds(n: int) -> list[int]:
    fds: list[int] = []
    for _ in range(n // 2 + 1):
        fds.extend(os.pipe())
    channel.close_fds(fds[n:])
    return fds[:n]


@pytest.mark.parametrize(
    ("call", "request_", "reply", "nfds"),
    [
        (lambda c: c.stat("/p"), Stat(id=0, path="/p"), ok(stat_result_of(Path("/"))), 1),
        (lambda c: c.mkdir("/p"), Mkdir(id=0, path="/p"), ok(), 2),
        (lambda c: c.listdir("/p"), Listdir(id=0, path="/p"), ok({"names": []}), 1),
        (lambda c: c.open("/p"), Open(id=0, path="/p", mode="r"), ok(), 0),
        (lambda c: c.open("/p"), Open(id=0, path="/p", mode="r"), ok(), 2),
        (lambda c: c.secret("s"), Secret(id=0, name="s"), ok({"size": 0}), 0),
        (lambda c: c.connect("h", 1), Connect(id=0, host="h", port=1), ok({"address": ["::1", 1]}), 0),
        (lambda c: c.bind("h", 1), Bind(id=0, host="h", port=1), ok({"address": ["::1", 1]}), 3),
        (lambda c: c.open("/p"), Open(id=0, path="/p", mode="r"), denied("no", "--allow-read"), 1),
        (lambda c: c.stat("/p"), Stat(id=0, path="/p"), error(ErrorCode.FAILED), 1),
    ],
    ids=[
        "stat+1",
        "mkdir+2",
        "listdir+1",
        "open+0",
        "open+2",
        "secret+0",
        "connect+0",
        "bind+3",
        "denied+1",
        "failed+1",
    ],
)
def test_a_reply_with_the_wrong_number_of_fds_is_a_protocol_error(
    pair: tuple[Client, FakeBroker],
    call: Callable[[Client], object],
    request_: Request,
    reply: Reply,
    nfds: int,
) -> None:
    cli, broker = pair
    broker.expect(request_, reply, pipe_fds(nfds))
    before = open_fds()
    with pytest.raises(RemoteProtocolError, match="descriptor"):
        call(cli)
    assert open_fds() == before  # every received descriptor was closed
    broker.check()
    with pytest.raises(ChannelError, match="unusable"):
        cli.ping()
    broker.assert_silent()


def raw_ok(request_id: int, result: dict[str, Any]) -> bytes:
    """A success reply as a broken broker would send it (reply_ok checks the result)."""
    return json.dumps({"id": request_id, "ok": True, "result": result}).encode()


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        (Stat(id=0, path="/p"), lambda r: b'{"id":2,"ok":true,"result":{"mode":1}}'),
        (Stat(id=0, path="/p"), lambda r: raw_ok(r.id, {**stat_result_of(Path("/")), "blocks": 1})),
        (Stat(id=0, path="/p"), lambda r: reply_ok(protocol.Ping(id=r.id + 1), {})),
        (Stat(id=0, path="/p"), lambda r: b'{"id":2,"ok":true}'),
    ],
    ids=["missing-fields", "unknown-field", "wrong-id", "not-a-reply"],
)
def test_a_malformed_reply_is_a_protocol_error(
    pair: tuple[Client, FakeBroker], request_: Request, reply: Reply
) -> None:
    cli, broker = pair
    broker.expect(request_, reply, pipe_fds(1))
    before = open_fds()
    with pytest.raises(RemoteProtocolError):
        cli.stat("/p")
    assert open_fds() == before
    with pytest.raises(ChannelError):
        cli.ping()


def test_a_closed_channel_is_a_channel_error(pair: tuple[Client, FakeBroker]) -> None:
    cli, broker = pair
    broker.sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(ChannelError):
        cli.ping()
    with pytest.raises(ChannelError):
        cli.ping()


# --- the module-level API --------------------------------------------------------------------------


def test_module_functions_use_the_default_client(
    pair: tuple[Client, FakeBroker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, broker = pair
    monkeypatch.setattr(client, "_default", cli)
    path = tmp_path / "f"
    path.write_text("data")
    broker.expect(Open(id=0, path=str(path), mode="r"), ok(), [broker_open(path, "r")])
    broker.expect(Listdir(id=0, path=str(tmp_path)), ok({"names": ["f"]}))
    broker.expect(Secret(id=0, name="k"), ok({"size": 1}), [sealed_memfd(b"k")])
    with client.open(path) as f:
        assert f.read() == "data"
    assert client.listdir(tmp_path) == ["f"]
    assert client.secret("k") == b"k"
    broker.check()


def test_the_public_functions() -> None:
    names = {"open", "stat", "listdir", "mkdir", "unlink", "rename", "connect", "connect_unix", "bind"}
    names |= {"secret", "secret_fd", "hello", "ping"}
    for name in names:
        assert callable(getattr(client, name)), name
        assert callable(getattr(Client, name)), name
    assert names <= set(client.__all__)
