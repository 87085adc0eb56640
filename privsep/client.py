"""The child's side of the channel: ask the broker, get an answer and maybe a descriptor.

Works in any Python child started by privsep: the channel's fd number is in
``PRIVSEP_FD``. Depends on ``protocol`` and ``channel`` only; the child never
needs policy or broker code. One request at a time per process: the channel
is a single socket, so a lock keeps threads from interleaving replies.

The API mirrors the standard library, on the default client (module-level
functions) or on a ``Client``::

    open(path, mode="r", buffering=-1, encoding=None, errors=None, newline=None) -> file object
    stat(path) -> os.stat_result          listdir(path) -> list[str]
    mkdir(path)    unlink(path)    rename(src, dst)
    connect(host, port, *, type="tcp", timeout=10.0) -> socket.socket
    connect_unix(path) -> socket.socket
    bind(host, port, *, type="tcp", backlog=128) -> socket.socket
    secret(name) -> bytes                 secret_fd(name) -> int (the caller closes it)

Paths are ``str`` or ``os.PathLike[str]``; a relative path is made absolute
against ``os.getcwd()`` here (``os.path.abspath``), since the broker refuses
relative paths. Every descriptor received is close-on-exec.

Errors, by the reply's code:

- ``denied``: ``privsep.DeniedError`` (a ``PermissionError``). Its message is
  the call, the broker's reason and, when the broker names the flag that would
  allow the request, a hint composed here from what was asked, e.g.
  ``open('/srv/data/x', 'w'): files[0] (/srv/data) grants read, list; write was
  needed. Re-run with --allow-write=/srv/data/x``.
- ``not_found`` for an op on paths (open, stat, listdir, mkdir, unlink, rename,
  connect_unix): ``FileNotFoundError(errno.ENOENT, message, path)``.
- any other code, and ``not_found`` for connect, bind and secret:
  ``privsep.BrokerError`` with ``code`` set to the wire code.
- a reply that breaks the protocol (wrong id, a descriptor missing or
  unexpected, a result that does not fit its model, a descriptor of the wrong
  kind): ``privsep.RemoteProtocolError``, after closing every descriptor that
  came with it. The channel is then unusable, as after a ``ChannelError``:
  every later call raises ``ChannelError``.
- invalid arguments (a bad mode string, a NUL in a path, a port out of range):
  ``ValueError`` (``TypeError`` for a wrong type), before anything is sent.
"""

from __future__ import annotations

import builtins
import codecs
import errno
import fcntl
import io
import os
import shlex
import socket
import stat as stat_module
import threading
from collections.abc import Callable
from typing import IO, Any, Literal, NamedTuple, TypeVar, cast, overload

from pydantic import BaseModel, ValidationError

from privsep import channel, protocol
from privsep.errors import BrokerError, ChannelError, DeniedError, RemoteProtocolError

__all__ = [
    "ENV_VAR",
    "Client",
    "RelayedUdpSocket",
    "bind",
    "connect",
    "connect_unix",
    "default",
    "hello",
    "listdir",
    "mkdir",
    "open",
    "ping",
    "rename",
    "secret",
    "secret_fd",
    "stat",
    "unlink",
]

ENV_VAR = "PRIVSEP_FD"

StrPath = str | os.PathLike[str]

# Not in the fcntl module of every Python this runs on.
_F_SEAL_FUTURE_WRITE = 0x0010
_NEEDED_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
_PATH_OPS = frozenset({"open", "stat", "listdir", "mkdir", "unlink", "rename", "connect_unix"})
_NEWLINES = (None, "", "\n", "\r", "\r\n")
_R = TypeVar("_R", bound=BaseModel)
_PathRequest = (
    protocol.Open | protocol.Stat | protocol.Listdir | protocol.Mkdir | protocol.Unlink | protocol.ConnectUnix
)


#: A call as the caller spelled it, (name, args), made into text only when a message needs it:
#: a plain tuple, as a NamedTuple's __new__ is one more Python frame per open.
_Spelled = tuple[str, tuple[object, ...]]


class _Ask(NamedTuple):
    """A request and what the client needs to explain its failure."""

    request: protocol.Request | protocol.Prepared  # with id 0 or none; the real id is set when it is sent
    call: str | _Spelled  # how the caller spelled it, for messages: "open('/x', 'w')"
    grants: tuple[str, ...]  # the value of the allow flag that would allow it, one per flag
    filenames: tuple[str, ...] = ()  # for FileNotFoundError; empty for ops not on paths


# A request without arguments is the same every time: the id is given when it is sent.
_PING = _Ask(protocol.Ping(id=0), "ping()", ())


class _Mode(NamedTuple):
    wire: protocol.OpenMode  # "r", "w+", ...
    binary: bool
    local: str  # the mode builtins.open gets for the received descriptor


#: Each valid mode string met so far, parsed (at most the few hundred spellings there are).
_MODES: dict[str, _Mode] = {}


def _parse_mode(mode: str) -> _Mode:
    """Python's open() modes, minus "U": one of r/w/a/x, then optional "+", "b" or "t", in any order."""
    if type(mode) is str:
        parsed = _MODES.get(mode)
        if parsed is not None:
            return parsed
    if not isinstance(mode, str):
        raise TypeError(f"open() mode must be str, not {type(mode).__name__}")
    chars = set(mode)
    bases = chars & set("rwax")
    if len(chars) != len(mode) or not chars <= set("rwax+bt") or len(bases) != 1 or {"b", "t"} <= chars:
        raise ValueError(f"invalid mode: {mode!r} (one of r, w, a, x, then optional +, and b or t)")
    plus = "+" if "+" in chars else ""
    # One base letter and at most one "+": always one of the eight wire modes.
    wire = cast(protocol.OpenMode, bases.pop() + plus)
    binary = "b" in chars
    parsed = _Mode(wire, binary, wire + ("b" if binary else ""))
    if type(mode) is str:
        _MODES[mode] = parsed
    return parsed


def _check_text_args(
    mode: _Mode, buffering: int, encoding: str | None, errors: str | None, newline: str | None
) -> None:
    """What builtins.open would refuse, refused before the broker creates or truncates anything."""
    if not isinstance(buffering, int) or isinstance(buffering, bool):
        raise TypeError("buffering must be an int")
    if encoding is None and errors is None and newline is None:  # the usual call: nothing else to check
        if buffering == 0 and not mode.binary:
            raise ValueError("can't have unbuffered text I/O")
        return
    for name, value in (("encoding", encoding), ("errors", errors), ("newline", newline)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"open() argument '{name}' must be str or None, not {type(value).__name__}")
    if mode.binary:
        for name, value in (("encoding", encoding), ("errors", errors), ("newline", newline)):
            if value is not None:
                raise ValueError(f"binary mode doesn't take an {name} argument")
        return
    if buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    if newline not in _NEWLINES:
        raise ValueError(f"illegal newline value: {newline!r}")
    if encoding is not None and encoding != "locale":
        codecs.lookup(encoding)  # LookupError, as builtins.open raises


_KEPT_FLAGS = os.O_ACCMODE | os.O_APPEND


def _check_open_flags(fd: int, mode: protocol.OpenMode) -> None:
    """F_GETFL keeps the access mode and O_APPEND of the flags the broker opened with.

    (A directory is refused by builtins.open itself: FileIO checks with fstat.)
    """
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_PATH or flags & _KEPT_FLAGS != protocol.OPEN_FLAGS[mode] & _KEPT_FLAGS:
        raise RemoteProtocolError(f"the broker sent a descriptor whose flags do not match open mode {mode!r}")


def _opener(fd: int, handed: list[bool]) -> Callable[[str, int], int]:
    """builtins.open's opener for a received ``fd``: from its call on, the file object owns ``fd``
    (made only for the modes that need builtins.open: no closure per unbuffered binary open)."""

    def opener(_path: str, _flags: int) -> int:
        handed[0] = True
        return fd

    return opener


def _abspath(path: StrPath, what: str = "path") -> str:
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise TypeError(f"{what} must be str or os.PathLike[str], not {type(raw).__name__}")
    if not raw:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), raw)
    if "\0" in raw:
        raise ValueError(f"embedded null character in {what}")
    # What abspath does with an absolute path: normpath alone (no getcwd, three calls fewer).
    return os.path.normpath(raw) if raw[0] == "/" else os.path.abspath(raw)


def _hostport(host: str, port: int, type: str) -> str:
    """HOST:PORT as --allow-connect/--allow-bind take it: [v6]:PORT, /udp suffixed."""
    spelled = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return spelled + ("/udp" if type == "udp" else "")


def _with_call(call: str | _Spelled, message: str) -> str:
    if not isinstance(call, str):
        name, args = call
        call = f"{name}({', '.join(map(repr, args))})"
    return f"{call}: {message}" if message else call


def _denial(ask: _Ask, error: protocol.ErrorInfo) -> DeniedError:
    text = _with_call(ask.call, error.message or "denied")
    if error.allow is not None and ask.grants:
        flags = " ".join(shlex.quote(f"{error.allow}={grant}") for grant in ask.grants)
        text += ("" if text.endswith(".") else ".") + f" Re-run with {flags}"
    return DeniedError(text)


def _socket_from_fd(fd: int, families: tuple[int, ...], kind: int | None, what: str) -> socket.socket:
    """Wrap a received descriptor; close it and raise if it is not the socket asked for."""
    try:
        if not stat_module.S_ISSOCK(os.fstat(fd).st_mode):
            raise RemoteProtocolError(f"the broker answered {what} with a descriptor that is not a socket")
        sock = socket.socket(fileno=fd)
    except BaseException:
        channel.close_fds((fd,))
        raise
    try:
        if sock.family not in families or (kind is not None and sock.type != kind):
            raise RemoteProtocolError(f"the broker answered {what} with a socket of the wrong family or type")
        sock.setblocking(True)  # whatever the broker did to connect with a timeout
        return sock
    except BaseException:
        sock.close()
        raise


def _error(ask: _Ask, error: protocol.ErrorInfo) -> BaseException:
    """The exception an error reply becomes: DeniedError, FileNotFoundError or BrokerError."""
    code = error.code
    if code is protocol.ErrorCode.DENIED:
        return _denial(ask, error)
    if code is protocol.ErrorCode.NOT_FOUND and ask.request.op in _PATH_OPS:
        names = ask.filenames
        if len(names) == 2:
            return FileNotFoundError(errno.ENOENT, error.message, names[0], None, names[1])
        return FileNotFoundError(errno.ENOENT, error.message, names[0])
    return BrokerError(code.value, _with_call(ask.call, error.message))


def _request(model: type[_R], **fields: Any) -> _R:
    """Build a request (id set later); bad arguments are a ValueError naming the field."""
    try:
        # The model's validator itself: what model(...) calls, one Python frame less.
        return cast(_R, model.__pydantic_validator__.validate_python({"id": 0, **fields}))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise ValueError(f"invalid {model.model_fields['op'].default} request: {detail}") from None


def _on_path(model: type[_PathRequest], name: str, target: str, **fields: Any) -> _Ask:
    """A request on one path: the hint grants that path and FileNotFoundError names it."""
    return _Ask(_request(model, path=target, **fields), f"{name}({target!r})", (target,), (target,))


def _timeout_ms(timeout: float) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError("timeout must be a number of seconds")
    if not 0 < timeout <= 600:
        raise ValueError("timeout must be more than 0 and at most 600 seconds")
    return max(1, round(timeout * 1000))


def _stat_result(st: protocol.StatResult) -> os.stat_result:
    times = [divmod(ns, 10**9) for ns in (st.atime_ns, st.mtime_ns, st.ctime_ns)]
    return os.stat_result(
        (
            st.mode,
            st.ino,
            st.dev,
            st.nlink,
            st.uid,
            st.gid,
            st.size,
            *(sec for sec, _ in times),  # the integer times of stat_result[7:10]
            *(sec + nsec * 1e-9 for sec, nsec in times),  # st_atime..., as CPython computes them
            st.atime_ns,
            st.mtime_ns,
            st.ctime_ns,
        )
    )


def _check_listening(sock: socket.socket) -> None:
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise RemoteProtocolError("the broker answered bind with a TCP socket that is not listening")


def _check_secret_fd(fd: int, size: int) -> None:
    info = os.fstat(fd)
    if not stat_module.S_ISREG(info.st_mode) or info.st_size != size:
        raise RemoteProtocolError("the broker answered secret with a descriptor that does not fit")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        raise RemoteProtocolError("the broker answered secret with a descriptor that is not read-only")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0  # EINVAL: not a memfd
    if seals & _NEEDED_SEALS != _NEEDED_SEALS or not seals & (fcntl.F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE):
        raise RemoteProtocolError("the broker answered secret with a memfd that is not sealed")


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class RelayedUdpSocket:
    """A UDP socket bound by the broker, used through a relay.

    The broker keeps the real socket: a UDP socket in the child's hands could
    send anywhere. Datagrams travel on a unix seqpacket socket, framed with
    the peer's address (docs/PROTOCOL.md). ``sendto`` reaches only peers that
    have sent to this socket; other datagrams are dropped by the broker and
    named in its report.
    """

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self._sock = sock
        self._address = address

    def getsockname(self) -> tuple[str, int]:
        """The address the broker bound."""
        return self._address

    def recvfrom(self, bufsize: int = protocol.MAX_DATAGRAM) -> tuple[bytes, tuple[str, int]]:
        while True:
            decoded = protocol.decode_datagram(self._sock.recv(bufsize + protocol.DATAGRAM_FRAMING))
            if decoded is not None:
                address, payload = decoded
                return payload[:bufsize], address

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self._sock.send(protocol.encode_datagram((str(address[0]), int(address[1])), bytes(data)))
        return len(data)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RelayedUdpSocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Client:
    """A connection to the broker over an already-open channel socket.

    The conversation's rules (ids, ``hello``, what each reply must carry, the
    broken state) are ``protocol.ClientProtocol``'s, and building requests,
    explaining errors and checking what came back are this module's functions;
    this class does the I/O and hands each step to them.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._protocol = protocol.ClientProtocol()

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

    # --- the round trip ----------------------------------------------------------------------------

    def _call(self, ask: _Ask, model: type[_R]) -> tuple[_R, int | None]:
        """Send one request, return its typed result and its descriptor (ours to close), or raise."""
        with self._lock:
            if self._protocol.hello is None:
                self._ensure_hello()
            answered = self._roundtrip(ask)
        assert isinstance(answered.result, model)  # ClientProtocol parsed it with the op's model
        return answered.result, answered.fd

    def _call_fd(self, ask: _Ask, model: type[_R]) -> tuple[_R, int]:
        result, fd = self._call(ask, model)
        assert fd is not None  # ClientProtocol guarantees it for an op in OPS_WITH_FD
        return result, fd

    def _ensure_hello(self) -> protocol.HelloResult:
        if self._protocol.hello is None:
            ask = _Ask(protocol.Hello(id=0, versions=protocol.SUPPORTED_VERSIONS), "hello()", ())
            self._roundtrip(ask)
        assert self._protocol.hello is not None
        return self._protocol.hello

    def _roundtrip(self, ask: _Ask) -> protocol.Answered:
        frame_out = self._protocol.send(ask.request)
        try:
            channel.send(self._sock, frame_out)
            frame = channel.recv(self._sock)
            if frame is None:
                raise ChannelError("the broker closed the channel")
        except BaseException as exc:
            # Interrupted or failed between request and reply: the next reply would be this one's.
            self._protocol.lost(str(exc) or type(exc).__name__)
            raise
        try:
            outcome = self._protocol.receive(frame.data, frame.fds)
        except BaseException:
            channel.close_fds(frame.fds)
            raise
        if not isinstance(outcome, protocol.Answered):  # a NamedTuple: no ABCMeta check, unlike a model
            raise _error(ask, outcome)
        return outcome

    def _socket(self, fd: int, families: tuple[int, ...], kind: int | None, what: str) -> socket.socket:
        with self._protocol.checking():  # a descriptor of the wrong kind breaks the channel
            return _socket_from_fd(fd, families, kind, what)

    # --- Sandbox.call (used by privsep._callee) --------------------------------------------------------

    def _call_args(self) -> protocol.CallArgsResult:
        """In a ``Sandbox.call`` child (privsep._callee): the function to run and its JSON arguments."""
        return self._call(_Ask(protocol.CallArgs(id=0), "call_args()", ()), protocol.CallArgsResult)[0]

    def _call_return(self, answer: protocol.CallReturn) -> None:
        """In a ``Sandbox.call`` child (privsep._callee): hand back the value or the failure (once)."""
        self._call(_Ask(answer, "call_return()", ()), protocol.EmptyResult)

    # --- the API -------------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """The broker's answer to ``hello`` (sent automatically before the first request)."""
        with self._lock:
            return self._ensure_hello().model_dump()

    def ping(self) -> None:
        """A round trip that does nothing: proves the broker is there and answering."""
        self._call(_PING, protocol.EmptyResult)

    def open(  # noqa: PLR0917 - builtins.open's signature
        self,
        path: StrPath,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """Open a file through the broker; arguments and result as builtins.open.

        The broker opens it with the flags of ``mode`` (without "b"/"t"); text or
        binary, buffering and encoding are applied here. ``name`` is the absolute path.
        """
        parsed = _parse_mode(mode)
        _check_text_args(parsed, buffering, encoding, errors, newline)
        target = _abspath(path)
        # Checked and encoded without a model; the model only for a path it refuses, to say why.
        request = protocol.prepare_open(target, parsed.wire) or _request(
            protocol.Open, path=target, mode=parsed.wire
        )
        ask = _Ask(request, ("open", (target, mode)), (target,), (target,))
        with self._lock:  # _call's steps, without its check of the result: open's is empty
            if self._protocol.hello is None:
                self._ensure_hello()
            fd = self._roundtrip(ask).fd
        assert fd is not None  # ClientProtocol guarantees it for open
        handed = [False]  # whether the file object owns fd (it closes it on failure)
        try:
            _check_open_flags(fd, parsed.wire)
            try:
                if buffering == 0 and parsed.binary:
                    # What builtins.open returns for this mode, the FileIO itself, made without
                    # the opener call and its FIOCLEX (the fd is close-on-exec from recvmsg on).
                    raw = io.FileIO(fd, parsed.wire, closefd=True)
                    handed[0] = True  # made: it owns fd (FileIO does not close an fd it refused)
                    raw.name = target
                    return raw
                return builtins.open(
                    target, parsed.local, buffering, encoding, errors, newline, opener=_opener(fd, handed)
                )
            except IsADirectoryError:  # FileIO's fstat of the received fd: no lookup by name
                raise RemoteProtocolError("the broker answered open with a directory") from None
        except RemoteProtocolError as exc:  # as ClientProtocol.checking does, without a generator per open
            self._protocol.lost(str(exc))
            if not handed[0]:
                channel.close_fds((fd,))
            raise
        except BaseException:
            if not handed[0]:
                channel.close_fds((fd,))
            raise

    def stat(self, path: StrPath) -> os.stat_result:
        """``os.stat`` through the broker (st_blksize, st_blocks and st_rdev are None)."""
        target = _abspath(path)
        return _stat_result(self._call(_on_path(protocol.Stat, "stat", target), protocol.StatResult)[0])

    def listdir(self, path: StrPath) -> list[str]:
        """The names in a directory, without "." and "..", in no particular order."""
        target = _abspath(path)
        names: list[str] = []
        offset = 0
        while True:  # a large directory comes in pages, each one reply frame
            ask = _on_path(protocol.Listdir, "listdir", target, offset=offset)
            page, _ = self._call(ask, protocol.ListdirResult)
            names += page.names
            if page.next is None or page.next <= offset:
                return names
            offset = page.next

    def mkdir(self, path: StrPath) -> None:
        """Create a directory (the broker creates it 0700)."""
        self._call(_on_path(protocol.Mkdir, "mkdir", _abspath(path)), protocol.EmptyResult)

    def unlink(self, path: StrPath) -> None:
        """Remove a file."""
        self._call(_on_path(protocol.Unlink, "unlink", _abspath(path)), protocol.EmptyResult)

    def rename(self, src: StrPath, dst: StrPath) -> None:
        """Rename ``src`` to ``dst`` (replacing ``dst``, like os.rename).

        A denial's hint names both paths: the broker does not say which of them the policy lacks.
        """
        source, dest = _abspath(src, "src"), _abspath(dst, "dst")
        grants = (source,) if source == dest else (source, dest)
        request = _request(protocol.Rename, src=source, dst=dest)
        ask = _Ask(request, f"rename({source!r}, {dest!r})", grants, (source, dest))
        self._call(ask, protocol.EmptyResult)

    def connect(self, host: str, port: int, *, type: str = "tcp", timeout: float = 10.0) -> socket.socket:
        """A socket connected by the broker to ``host:port`` (``timeout``: seconds the broker waits).

        For ``type="udp"`` the socket is a unix seqpacket socket relayed by the
        broker to that one peer: ``send``/``recv`` carry datagrams as with a
        connected UDP socket, and nothing else can be reached through it.
        """
        request = _request(protocol.Connect, host=host, port=port, type=type, timeout_ms=_timeout_ms(timeout))
        ask = _Ask(request, f"connect({host!r}, {port!r}, type={type!r})", (_hostport(host, port, type),))
        _, fd = self._call_fd(ask, protocol.AddressResult)
        if type == "udp":
            return self._socket(fd, (socket.AF_UNIX,), socket.SOCK_SEQPACKET, "connect")
        return self._socket(fd, (socket.AF_INET, socket.AF_INET6), socket.SOCK_STREAM, "connect")

    def connect_unix(self, path: StrPath) -> socket.socket:
        """A unix socket connected by the broker to the socket at ``path``."""
        ask = _on_path(protocol.ConnectUnix, "connect_unix", _abspath(path))
        _, fd = self._call_fd(ask, protocol.EmptyResult)
        return self._socket(fd, (socket.AF_UNIX,), None, "connect_unix")

    @overload
    def bind(
        self, host: str, port: int, *, type: Literal["tcp"] = "tcp", backlog: int = 128
    ) -> socket.socket: ...
    @overload
    def bind(self, host: str, port: int, *, type: Literal["udp"], backlog: int = 128) -> RelayedUdpSocket: ...
    def bind(
        self, host: str, port: int, *, type: str = "tcp", backlog: int = 128
    ) -> socket.socket | RelayedUdpSocket:
        """A socket the broker bound to ``host:port``.

        TCP: the listening socket itself (``backlog``). UDP: a RelayedUdpSocket;
        the broker keeps the bound socket and relays datagrams, and replies go
        only to peers that wrote first.
        """
        request = _request(protocol.Bind, host=host, port=port, type=type, backlog=backlog)
        ask = _Ask(request, f"bind({host!r}, {port!r}, type={type!r})", (_hostport(host, port, type),))
        result, fd = self._call_fd(ask, protocol.AddressResult)
        if type == "udp":
            relay = self._socket(fd, (socket.AF_UNIX,), socket.SOCK_SEQPACKET, "bind")
            bound_host, bound_port = result.address
            return RelayedUdpSocket(relay, (str(bound_host), int(bound_port)))
        sock = self._socket(fd, (socket.AF_INET, socket.AF_INET6), socket.SOCK_STREAM, "bind")
        try:
            with self._protocol.checking():
                _check_listening(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def secret_fd(self, name: str) -> int:
        """The secret ``name`` as a sealed, read-only memfd; the caller owns (and closes) it."""
        ask = _Ask(_request(protocol.Secret, name=name), f"secret({name!r})", (f"{name}=env:VAR",))
        result, fd = self._call_fd(ask, protocol.SecretResult)
        try:
            with self._protocol.checking():
                _check_secret_fd(fd, result.size)
        except BaseException:
            channel.close_fds((fd,))
            raise
        return fd

    def secret(self, name: str) -> bytes:
        """The secret ``name``'s bytes (read from its memfd, which is closed at once)."""
        fd = self.secret_fd(name)
        try:
            return _read_all(fd)
        finally:
            os.close(fd)


_default: Client | None = None
_default_lock = threading.Lock()


def default() -> Client:
    """The process-wide client on ``PRIVSEP_FD``, created on first use."""
    global _default
    made = _default
    if made is not None:  # set once, never unset: no lock on every call
        return made
    with _default_lock:
        if _default is None:
            _default = Client.from_env()
        return _default


def hello() -> dict[str, Any]:
    """``Client.hello`` on the default client."""
    return default().hello()


def ping() -> None:
    """``Client.ping`` on the default client."""
    default().ping()


def open(  # noqa: PLR0917 - builtins.open's signature
    path: StrPath,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> IO[Any]:
    """``Client.open`` on the default client."""
    return default().open(path, mode, buffering, encoding, errors, newline)


def stat(path: StrPath) -> os.stat_result:
    """``Client.stat`` on the default client."""
    return default().stat(path)


def listdir(path: StrPath) -> list[str]:
    """``Client.listdir`` on the default client."""
    return default().listdir(path)


def mkdir(path: StrPath) -> None:
    """``Client.mkdir`` on the default client."""
    default().mkdir(path)


def unlink(path: StrPath) -> None:
    """``Client.unlink`` on the default client."""
    default().unlink(path)


def rename(src: StrPath, dst: StrPath) -> None:
    """``Client.rename`` on the default client."""
    default().rename(src, dst)


def connect(host: str, port: int, *, type: str = "tcp", timeout: float = 10.0) -> socket.socket:
    """``Client.connect`` on the default client."""
    return default().connect(host, port, type=type, timeout=timeout)


def connect_unix(path: StrPath) -> socket.socket:
    """``Client.connect_unix`` on the default client."""
    return default().connect_unix(path)


@overload
def bind(host: str, port: int, *, type: Literal["tcp"] = "tcp", backlog: int = 128) -> socket.socket: ...
@overload
def bind(host: str, port: int, *, type: Literal["udp"], backlog: int = 128) -> RelayedUdpSocket: ...
def bind(host: str, port: int, *, type: str = "tcp", backlog: int = 128) -> socket.socket | RelayedUdpSocket:
    """``Client.bind`` on the default client."""
    if type == "udp":
        return default().bind(host, port, type="udp", backlog=backlog)
    if type == "tcp":
        return default().bind(host, port, type="tcp", backlog=backlog)
    raise ValueError(f"type must be 'tcp' or 'udp', not {type!r}")


def secret(name: str) -> bytes:
    """``Client.secret`` on the default client."""
    return default().secret(name)


def secret_fd(name: str) -> int:
    """``Client.secret_fd`` on the default client."""
    return default().secret_fd(name)
