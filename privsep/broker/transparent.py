"""Transparent brokering: ``open`` and ``connect`` of programs that never heard of privsep.

``cat``, ``curl``, a Go server cannot send a request over the channel. With
transparent brokering on (broker-served ``[[files]]`` grants, ``[[connect]]``
rules), the seccomp filter sends their ``open``/``creat``/``openat`` and
``connect`` calls to the broker as user
notifications, and this module turns each into the very request a
``privsep.client`` call would have sent: same decision, same race-free
resolution beneath pinned grants, same audit record and denial report.

The trap (sandlock's supervisor was escaped through it, its issues 27, 111,
112 and 246): a syscall answered with "continue" runs with the arguments as
they are *then* in the child's memory, not as the broker read them. So a
call the broker serves is never continued. The broker reads the arguments
once, checks that the notification is still live (so the pid it read from
was the caller's), decides on its own copy, performs the operation itself
and injects the result: the opened fd with ``SECCOMP_ADDFD_FLAG_SEND``
(install and answer in one step), or for ``connect`` a socket the broker
connected, swapped in place of the child's. A thread that rewrites the path
or the address afterwards changes nothing.

What the broker does not serve is handed back to the kernel ("continue"):
a path inside the child's own view whose deciding rule the kernel serves
(or that no [[files]] rule covers), a unix socket. An ``O_CREAT`` with a
setuid/setgid mode is refused instead, judged on the registers the broker
read (which the child cannot change). Then nothing is being granted: the call runs exactly as if the
filter had allowed it, under the mount namespace and Landlock, whatever the
child's buffers say by then. A path outside the view that no rule allows is
refused with ``EACCES`` and reported, as ``client.open`` would be.

Limits, on purpose: no directory fds (``O_DIRECTORY`` on a brokered path
fails, as ``client.open`` does: ``ls`` of a broker-served directory needs
``client.listdir``); no ``O_PATH``/``O_TMPFILE``; ``openat2`` never reaches
the broker (the filter fails it with ENOSYS, since its flags and mode live in
memory); connect is TCP by IP address (names are the sandbox's resolver's,
broker/egress.py; UDP needs ``client.connect(..., type="udp")``).

``bind`` (an unmodified server, with [[bind]] rules) is served like
``connect``: decided as ``client.bind``, performed on a socket of the
broker's, which is bound *and listening* before it replaces the program's
socket at the same fd number, and only while that number still holds the
socket the broker checked (see :func:`_bind`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import socket
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from privsep import _linux
from privsep._lazy import lazy_module
from privsep._record import Record, setfield
from privsep.broker import notify, unixconnect
from privsep.broker.actas import acting_as
from privsep.broker.answers import Answer, Refusal, denied
from privsep.broker.services import Services, perform

if TYPE_CHECKING:
    import ipaddress

    from privsep import protocol
    from privsep.policy import decide
else:
    # pydantic, both: loaded with the first call this serves, not when a sandbox starts.
    protocol = lazy_module("privsep.protocol", globals())
    decide = lazy_module("privsep.policy.decide", globals())
    ipaddress = lazy_module("ipaddress", globals())  # with the first address it reads

if TYPE_CHECKING:
    from privsep.broker.egress import Admitted, Egress

#: Host state a lookup never teaches a grant of (a program's probes of the machine).
_NEVER_LEARNED = ("/proc", "/sys", "/dev", "/run")
#: privsep learn: the path lookups it learns from, syscall number -> (dirfd arg or None, path arg).
_LOOKUP_PATH_ARG: dict[int, tuple[int | None, int]] = {
    _linux.NR_STAT: (None, 0),
    _linux.NR_LSTAT: (None, 0),
    _linux.NR_ACCESS: (None, 0),
    _linux.NR_READLINK: (None, 0),
    _linux.NR_NEWFSTATAT: (0, 1),
    _linux.NR_READLINKAT: (0, 1),
    _linux.NR_FACCESSAT: (0, 1),
    _linux.NR_STATX: (0, 1),
    _linux.NR_FACCESSAT2: (0, 1),
}
_O_LARGEFILE = 0o100000  # the kernel's value; Python's os.O_LARGEFILE is 0 on x86_64
_KNOWN_FLAGS = (
    os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND | os.O_NONBLOCK
    | os.O_DSYNC | os.O_SYNC | os.O_DIRECT | _O_LARGEFILE | os.O_DIRECTORY | os.O_NOFOLLOW
    | os.O_NOATIME | os.O_CLOEXEC | os.O_PATH | os.O_TMPFILE | os.O_ASYNC
)  # fmt: skip
_SIOCGSKNS = 0x894C  # the network namespace of a socket, as an fd
_CONNECT_TIMEOUT_MS = 30_000
_SOCKADDR_MAX = 128
_SHOWN_MAX = 1024
# Options a program commonly sets before connect(); carried over to the broker's socket.
_CARRIED_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
)


class Served(Record):
    """A call the broker decided: what to audit and report, exactly like a wire request."""

    __slots__ = ("request", "result")
    request: protocol.Request
    result: Answer | Refusal

    def __init__(self, request: protocol.Request, result: Answer | Refusal) -> None:
        setfield(self, "request", request)
        setfield(self, "result", result)


class Deferred(Record):
    """A slow call (connect): run ``job`` on a worker; it answers the notification itself."""

    __slots__ = ("drop", "job")
    job: Callable[[], Served | None]
    drop: Callable[[], None]
    """Release what ``job`` would have (the call's sandbox is gone before its turn came)."""

    def __init__(self, job: Callable[[], Served | None], drop: Callable[[], None]) -> None:
        self._assign(locals())


class _Unserved(Exception):
    """The call is not the broker's to serve: answer with ``err``, or hand it back when None."""

    def __init__(self, err: int | None) -> None:
        super().__init__(err)
        self.err = err


def view_roots(binds: tuple[str, ...], symlinks: tuple[str, ...], tmp: bool) -> tuple[str, ...]:
    """The paths the child sees by itself: there the kernel decides, not the broker."""
    return (*binds, *symlinks, "/proc", "/dev", *(("/tmp",) if tmp else ()))


class Transparent:
    """Serves one sandbox's transparently brokered calls (see the module docstring)."""

    def __init__(
        self,
        calls: frozenset[int],
        roots: tuple[str, ...],
        kernel_served: frozenset[int] = frozenset(),
        *,
        view_dirs: frozenset[str] = frozenset(),
        learning: bool = False,
        ids: tuple[int, int] | None = None,
        egress: Egress | None = None,
    ) -> None:
        self.calls = calls
        self._egress = egress  # the sandbox's resolver and proxies (egress.py), if it has them
        self._ids = ids  # the sandbox's host uid and gid, for perform()
        self._roots = roots
        self._view_dirs = view_dirs
        self._kernel_served = kernel_served
        self._learning = learning

    def serve(
        self, listener: int, note: notify.Notification, services: Services | None
    ) -> Served | Deferred | None:
        """Answer ``note`` (or hand it to a worker); None when there is nothing to record."""
        try:
            if note.nr == _linux.NR_CONNECT:
                return self._connect(listener, note, services)
            if services is None:
                raise _Unserved(None)
            if note.nr in _LOOKUP_PATH_ARG:
                return self._learn_lookup(listener, note, services)
            if note.nr == _linux.NR_BIND:
                return _bind(listener, note, services, self._ids)
            return self._open(listener, note, services)
        except _Unserved as unserved:
            if unserved.err is None:
                notify.hand_back(listener, note)
            else:
                notify.refuse(listener, note, unserved.err)
            return None

    # -- open ---------------------------------------------------------------

    def _open(self, listener: int, note: notify.Notification, services: Services) -> Served | None:
        dirfd, path_at, flags = _open_args(note)
        path = _read_path(note.pid, path_at)
        if not path.startswith("/"):
            path = posixpath.join(_base(note.pid, dirfd), path)
        if not notify.is_live(listener, note):
            return None  # the caller is gone: what we read may not have been its memory
        path = _normalise(path)
        if not self._brokered(services, path):
            if flags & (os.O_CREAT | os.O_TMPFILE) and _create_mode(note) & _linux.SETID_BITS:
                raise _Unserved(errno.EPERM)  # never a set-id file on the host (seccomp.py says why)
            raise _Unserved(None)  # the kernel's own confinement decides
        if flags & ~_KNOWN_FLAGS:
            raise _Unserved(errno.EINVAL)  # unknown bits are refused, never passed on
        if not protocol.is_utf8(path):
            # The broker's rules, requests and records are text: a name that is not UTF-8 is
            # refused (EACCES) and reported with its bytes escaped, never passed on.
            shown = _shown(path)
            notify.refuse(listener, note, errno.EACCES)
            request = protocol.Open(id=0, path=shown, mode=_mode(flags))
            return Served(
                request,
                denied("the path is not valid UTF-8; the broker serves UTF-8 paths only", subject=shown),
            )
        request = protocol.Open(id=0, path=path, mode=_mode(flags))
        unserved = _unserved_kind(flags)
        if unserved is not None:
            if self._learning and flags & os.O_DIRECTORY:
                return self._learn_listing(listener, note, services, path)
            notify.refuse(listener, note, errno.EACCES)
            refusal = denied(f"{unserved} are not brokered, only regular files", subject=path)
            return Served(request, refusal)
        return self._hand_over(listener, note, services, request, flags)

    def _hand_over(
        self, listener: int, note: notify.Notification, services: Services, request: protocol.Open, flags: int
    ) -> Served | None:
        """Open as a client request would, then inject the fd into the caller."""
        request, result = _perform_open(services, request, flags, self._ids)
        if isinstance(result, Refusal):
            notify.refuse(listener, note, _errno_of(result))
            return Served(request, result)
        assert result.fd is not None
        try:
            notify.inject_fd(listener, note, result.fd, cloexec=bool(flags & os.O_CLOEXEC))
        except OSError as exc:
            if result.relay is not None:
                result.relay.close()
            if exc.errno == errno.ENOENT:
                return None  # the caller died meanwhile
            notify.refuse(listener, note, exc.errno or errno.EIO)  # EMFILE: the caller's table is full
            return Served(
                request, Refusal(protocol.ErrorCode.FAILED, f"could not hand the fd over: {exc.strerror}")
            )
        finally:
            os.close(result.fd)
        # An append-only file's relay (the fd was a pipe's end) is the loop's to serve from here.
        return Served(request, Answer(result.result, rule=result.rule, relay=result.relay))

    @staticmethod
    def _learn_listing(listener: int, note: notify.Notification, services: Services, path: str) -> Served:
        """privsep learn: a directory the program opened is a listing it needed. The learning
        services grow the policy from the request; the fd is still refused (never a dirfd)."""
        listing = protocol.Listdir(id=0, path=path)
        result = perform(services, listing, None)
        if isinstance(result, Answer):
            result = Answer(rule=result.rule)
        notify.refuse(listener, note, errno.EACCES)
        return Served(listing, result)

    def _learn_lookup(self, listener: int, note: notify.Notification, services: Services) -> Served | None:
        """privsep learn only: a ``stat``/``access``/``readlink`` outside the view is a path the
        command needed. Learn it (a listing grant for a directory on the host, else read),
        then hand the call back: the kernel answers it as before (ENOENT outside the view),
        so nothing is granted in this run; the policy written at exit has the path."""
        if not self._learning:
            raise _Unserved(None)
        dirfd_arg, path_arg = _LOOKUP_PATH_ARG[note.nr]
        dirfd = _linux.AT_FDCWD if dirfd_arg is None else _s32(note.args[dirfd_arg])
        try:
            # An empty path (AT_EMPTY_PATH on an fd), an unreadable one: nothing by name to
            # learn; the kernel answers the call as it would have.
            path = _read_path(note.pid, note.args[path_arg])
            if not path.startswith("/"):
                path = posixpath.join(_base(note.pid, dirfd), path)
            path = _normalise(path)
        except _Unserved:
            raise _Unserved(None) from None
        if not notify.is_live(listener, note) or not self._brokered(services, path):
            raise _Unserved(None)
        if not os.path.lexists(path) or any(_under(path, top) for top in _NEVER_LEARNED):
            raise _Unserved(None)  # a probe for something the host lacks, or host state
        request: protocol.Request = (
            protocol.Listdir(id=0, path=path) if os.path.isdir(path) else protocol.Stat(id=0, path=path)
        )
        result = perform(services, request, None)
        if isinstance(result, Answer):
            result = Answer(rule=result.rule)
        notify.hand_back(listener, note)
        return Served(request, result)

    def _brokered(self, services: Services, path: str) -> bool:
        """The broker decides ``path``; False: the kernel does (the view, a kernel-served grant)."""
        if path in self._view_dirs:
            return False  # a directory on the way to a bind: in the view (empty but for it)
        index = decide.deciding_rule(services.policy, path)
        if index is not None:
            # A deny is refused and reported here, though a mask already hides the path.
            return services.policy.files[index].deny or index not in self._kernel_served
        if self._learning and self._tmp_host_path(path):
            return True
        return not (path == "/" or any(_under(path, root) for root in self._roots))

    def _rule_decides(self, services: Services, path: str) -> bool:
        """A [[files]] rule the broker serves (or a deny) decides ``path``.

        Elsewhere a unix connect is resolved in the child's view, where a path outside it
        simply does not exist (ENOENT, no report: glibc probes nscd's socket on every lookup).
        """
        index = decide.deciding_rule(services.policy, path)
        return index is not None and (services.policy.files[index].deny or index not in self._kernel_served)

    def _tmp_host_path(self, path: str) -> bool:
        """Learning: a path below the private /tmp that names the host's, not the child's scratch.

        The child's own /tmp is empty at start, so a path whose directory exists on the host
        below /tmp (not /tmp itself, where programs make their scratch names) is the host's.
        """
        if "/tmp" not in self._roots or not _under(path, "/tmp") or path == "/tmp":
            return False
        if any(_under(path, root) for root in self._roots if root != "/tmp" and _under(root, "/tmp")):
            return False  # bound into the view: the kernel serves it
        parent = posixpath.dirname(path)
        return parent != "/tmp" and os.path.isdir(parent)

    # -- connect --------------------------------------------------------------

    def _connect(  # noqa: PLR0911 - one return per way a connect ends
        self, listener: int, note: notify.Notification, services: Services | None
    ) -> Deferred | Served | None:
        """Every connect: performed by the broker on the socket it checked, or refused (rule 2)."""
        their_fd, sock = _their_socket(note)
        handed_over = False  # to the worker, which closes it; else closed here, whatever happens
        try:
            address = _sockaddr_arg(note)
            cloexec = _fd_cloexec(note.pid, their_fd)
            if not notify.is_live(listener, note):
                return None
            if sock.family == socket.AF_UNIX:
                handed_over = True
                return self._connect_unix(listener, note, services, sock, address)
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise _Unserved(errno.EAFNOSUPPORT)  # the filter lets the child make no other kind
            if not _in_own_netns(sock):
                # One the broker made (connected or listening): never re-aimed, never disconnected.
                raise _Unserved(errno.EISCONN)
            peer = _sockaddr(address, sock.family)
            if peer is None:
                # AF_UNSPEC or malformed, on the child's own socket: done on that very socket.
                _answer(listener, note, _linux.connect_raw(sock.fileno(), address))
                return None
            if self._egress is not None and self._egress.serves(sock.type, peer):
                handed_over = True  # egress (issue 17): privsep's resolver or proxy, in the sandbox
                return self._egress.connect_inside(listener, note, sock, address)
            host, port = peer
            if services is None or not services.policy.transparent_net:
                # What its empty network namespace says. A TCP connect is reported with the flag
                # that would allow it, a name server's with the way to names; other UDP stays quiet.
                if services is not None and sock.type == socket.SOCK_DGRAM and port == 53:
                    notify.refuse(listener, note, errno.ENETUNREACH)
                    return Served(
                        protocol.Connect(id=0, host=host, port=port, type="udp"),
                        denied(
                            "the sandbox has no network, so a name lookup failed; to reach a host "
                            "by name, re-run with --allow-connect=HOST:PORT (the sandbox then "
                            "gets privsep's resolver, for the names allowed)",
                            subject=f"{host}:{port}/udp",
                        ),
                    )
                if services is None or sock.type != socket.SOCK_STREAM or port == 0:
                    raise _Unserved(errno.ENETUNREACH)
                from privsep.policy.decide import decide_connect  # noqa: PLC0415 - a rare path

                decision = decide_connect(services.policy, host, port, "tcp")
                notify.refuse(listener, note, errno.ENETUNREACH)
                rule = None if decision.rule is None else f"connect[{decision.rule}]"
                return Served(
                    protocol.Connect(id=0, host=host, port=port, type="tcp"),
                    denied(decision.message, allow=decision.allow_flag, rule=rule),
                )
            if sock.type != socket.SOCK_STREAM:
                request = protocol.Connect(id=0, host=host, port=max(port, 1), type="udp")
                refusal = denied(
                    "UDP is not brokered for unmodified programs; "
                    'use privsep.client.connect(host, port, type="udp")',
                    subject=f"{host}:{port}/udp",
                )
                notify.refuse(listener, note, errno.EACCES)
                return Served(request, refusal)
            if port == 0:
                raise _Unserved(errno.ECONNREFUSED)
            request = protocol.Connect(id=0, host=host, port=port, type="tcp", timeout_ms=_CONNECT_TIMEOUT_MS)
            admitted = None if self._egress is None else self._egress.admit(request)  # egress (issue 17)
            if isinstance(admitted, Refusal):
                notify.refuse(listener, note, errno.EACCES)
                return Served(request, admitted)
            mine = os.dup(listener)  # the loop may close the listener while the worker runs
            handed_over = True

            def drop() -> None:
                os.close(mine)
                sock.close()

            return Deferred(
                lambda: _finish_connect(
                    mine,
                    note,
                    services=services,
                    ids=self._ids,
                    request=request,
                    theirs=sock,
                    their_fd=their_fd,
                    cloexec=cloexec,
                    admitted=admitted,
                ),
                drop,
            )
        finally:
            if not handed_over:
                sock.close()

    def _connect_unix(
        self,
        listener: int,
        note: notify.Notification,
        services: Services | None,
        sock: socket.socket,
        address: bytes,
    ) -> Deferred | None:
        """A unix connect may wait (a full backlog): a worker performs it (see unixconnect.py).

        Whatever the worker needs of the caller (its root, its ids, its working directory)
        is taken here, and the notification checked live after it: the worker may run much
        later, when the caller's thread id may name a host process.
        """
        path = unixconnect.sockaddr_path(address)
        caller: unixconnect.Caller | None = None
        try:
            if path is not None and not path.startswith("/"):
                path = posixpath.join(_base(note.pid, _linux.AT_FDCWD), path)
            brokered = (
                path is not None and services is not None and self._rule_decides(services, _normalise(path))
            )
            if path is not None:
                try:
                    caller = unixconnect.capture(note.pid)
                except OSError:
                    raise _Unserved(errno.ESRCH) from None
            if not notify.is_live(listener, note):
                raise _Unserved(errno.ESRCH)  # answered to nobody: what we took may not be the caller's
        except BaseException:
            sock.close()
            if caller is not None:
                caller.close()
            raise
        mine = os.dup(listener)

        def job() -> Served | None:
            try:
                with _eio_on_failure(mine, note):
                    return unix_connect()
            finally:
                sock.close()
                os.close(mine)
                if caller is not None:
                    caller.close()

        def unix_connect() -> Served | None:
            if path is None:
                _answer(mine, note, unixconnect.connect_bounded(sock, address))
                return None
            assert caller is not None
            if brokered:
                assert services is not None
                return _connect_granted(mine, note, services, sock, caller, _normalise(path))
            return _connect_in_view(mine, note, sock, caller, path)

        def drop() -> None:
            os.close(mine)
            sock.close()
            if caller is not None:
                caller.close()

        return Deferred(job, drop)


def _shown(path: str) -> str:
    """A path that is not UTF-8, as the report shows it: bytes escaped, at most _SHOWN_MAX characters.

    Escaping can quadruple a path's length (``\\xff``), past what a request model holds.
    """
    shown = path.encode(errors="surrogateescape").decode(errors="backslashreplace")
    return shown if len(shown) <= _SHOWN_MAX else shown[: _SHOWN_MAX - 1] + "\u2026"


def _answer(listener: int, note: notify.Notification, err: int) -> None:
    if err:
        notify.refuse(listener, note, err)
    else:
        notify.succeed(listener, note, 0)


def _connect_granted(  # noqa: PLR0917 - the call, its socket, its caller and its path
    listener: int,
    note: notify.Notification,
    services: Services,
    sock: socket.socket,
    caller: unixconnect.Caller,
    path: str,
) -> Served:
    """A path the broker decides ([[files]] connect rule, or outside the view): as ``client.connect_unix``."""
    request = protocol.ConnectUnix(id=0, path=path) if protocol.is_utf8(path) else None
    if request is None:
        shown = _shown(path)
        notify.refuse(listener, note, errno.EACCES)
        return Served(
            protocol.ConnectUnix(id=0, path=shown),
            denied("the path is not valid UTF-8; the broker serves UTF-8 paths only", subject=shown),
        )
    try:
        decision, pathfd = services.files.connect_unix(path)
    except Refusal as refusal:
        notify.refuse(listener, note, _errno_of(refusal))
        return Served(request, refusal)
    rule = f"files[{decision.rule}]"
    try:
        err = unixconnect.connect_through(sock, pathfd, (caller.uid, caller.gid))
    finally:
        os.close(pathfd)
    _answer(listener, note, err)
    if err:
        return Served(request, Refusal(protocol.ErrorCode.FAILED, f"connect: {os.strerror(err)}", rule=rule))
    return Served(request, Answer(rule=rule))


def _connect_in_view(
    listener: int, note: notify.Notification, sock: socket.socket, caller: unixconnect.Caller, path: str
) -> Served | None:
    """A socket in the child's own view (its /tmp, a writable grant): as the kernel would, on its socket."""
    try:
        pathfd = unixconnect.open_in_view(caller, path)
    except unixconnect.HostSocket:
        notify.refuse(listener, note, errno.EACCES)
        shown = _shown(path)
        return Served(
            protocol.ConnectUnix(id=0, path=shown),
            denied(
                "this unix socket lies in a read-only part of the view, so a host process made it, "
                'not the sandbox; a [[files]] rule with access = ["connect"] for it lets the child reach it',
                subject=shown,
            ),
        )
    except OSError as exc:
        notify.refuse(listener, note, exc.errno or errno.EIO)
        return None
    try:
        _answer(listener, note, unixconnect.connect_through(sock, pathfd))
    finally:
        os.close(pathfd)
    return None


def _finish_connect(
    listener: int,
    note: notify.Notification,
    *,
    services: Services,
    ids: tuple[int, int] | None,
    request: protocol.Connect,
    theirs: socket.socket,
    their_fd: int,
    cloexec: bool,
    admitted: Admitted | None = None,
) -> Served | None:
    """On a worker: connect the broker's own socket, then swap it in for the child's.

    ``admitted``: the sandbox's egress decided it already (by the rules and its resolver's answers).
    """
    try:
        with _eio_on_failure(listener, note):
            result = perform(services, request, ids) if admitted is None else admitted.connect(request)
            if isinstance(result, Refusal):
                notify.refuse(listener, note, _errno_of(result))
                return Served(request, result)
            assert result.fd is not None
            ours = socket.socket(fileno=result.fd)
            try:
                _carry_over(theirs, ours)
            except OSError as exc:
                ours.close()
                notify.refuse(listener, note, exc.errno or errno.EIO)
                return Served(
                    request,
                    Refusal(protocol.ErrorCode.FAILED, f"could not prepare the socket: {exc.strerror}"),
                )
            ours.detach()  # result.fd is _swap_in's to close
            return _swap_in(
                listener, note, request, result, their_fd=their_fd, theirs=theirs, cloexec=cloexec
            )
    finally:
        theirs.close()
        os.close(listener)


@contextlib.contextmanager
def _eio_on_failure(listener: int, note: notify.Notification) -> Iterator[None]:
    """A slow call that fails on a worker is still answered (EIO), on the worker's own copy of
    the listener (rule 6): the loop's may be closed, or another fd's number, by then. The
    error goes on up, for the loop to log."""
    try:
        yield
    except Exception:
        with contextlib.suppress(OSError):  # answered already, or the caller has gone
            notify.refuse(listener, note, errno.EIO)
        raise


def _carry_over(theirs: socket.socket, ours: socket.socket) -> None:
    """What the program set on its socket before connect(): O_NONBLOCK and the common options."""
    flags = fcntl.fcntl(theirs.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(ours.fileno(), fcntl.F_SETFL, flags & os.O_NONBLOCK)
    for level, option in _CARRIED_OPTIONS:
        try:
            ours.setsockopt(level, option, theirs.getsockopt(level, option))
        except OSError:
            continue


# -- bind -------------------------------------------------------------------------

# What a server sets on its socket before bind(): carried over to the broker's socket, which
# is bound with them (SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY only mean something there).
_SERVER_OPTIONS = (
    (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    (socket.SOL_SOCKET, socket.SO_REUSEPORT),
    *_CARRIED_OPTIONS,  # what a client sets too (independent options: their order is free)
    (socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    (socket.IPPROTO_TCP, socket.TCP_FASTOPEN),
)
_V6_OPTIONS = ((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),)
_LINGER = struct.Struct("=ii")
_BIND_BACKLOG = 128  # until the program's own listen() sets its backlog on the socket

BindAddress = tuple[str, int] | tuple[str, int, int, int]


def _bind(
    listener: int, note: notify.Notification, services: Services, ids: tuple[int, int] | None
) -> Served | None:
    """bind() of an unmodified server: the broker binds a socket of its own and swaps it in.

    Decided exactly as ``client.bind`` (``decide_bind``: same audit record and
    denial report). The broker's socket gets the options the program set,
    is bound *and listening* before the program sees it (so no socket of the
    broker's in the child can be connect()ed anywhere), and replaces the
    program's at its fd number only if that number still holds the socket the
    broker checked. Its later ``listen``/``accept``/``getsockname`` are native.
    """
    their_fd, theirs = _their_socket(note)
    try:
        address = _sockaddr_arg(note)
        cloexec = _fd_cloexec(note.pid, their_fd)
        if not notify.is_live(listener, note):
            return None
        if theirs.family not in (socket.AF_INET, socket.AF_INET6):
            # A unix socket: as without transparent brokering (the mount namespace and Landlock
            # decide). Should another thread swap a TCP socket in meanwhile, Landlock (no TCP
            # bind/connect rule) refuses the kernel's bind, whatever socket it finds.
            raise _Unserved(None)
        if not _in_own_netns(theirs):
            raise _Unserved(errno.EINVAL)  # one the broker made: bound already, never re-bound
        host, port, bind_to = _bind_sockaddr(address, theirs.family, len(address))
        if theirs.type != socket.SOCK_STREAM:
            notify.refuse(listener, note, errno.EACCES)
            return Served(
                protocol.Bind(id=0, host=host, port=port, type="udp"),
                denied(
                    "UDP binds are not brokered for unmodified programs; "
                    'use privsep.client.bind(host, port, type="udp")',
                    subject=f"{host}:{port}/udp",
                ),
            )
        request = protocol.Bind(id=0, host=host, port=port, type="tcp", backlog=_BIND_BACKLOG)
        try:
            rule = services.net.decide_bind(host, port, "tcp")
            # The socket is made owned by the sandbox's host uid (its owner is the creating
            # thread's file-system uid), so a SO_REUSEPORT it carries over joins only its
            # own sockets' group: never that of a host service listening there as root.
            with acting_as(*(ids or (-1, -1))):
                result = services.net.listen_tcp(
                    theirs.family,
                    bind_to,
                    rule,
                    _BIND_BACKLOG,
                    prepare=lambda ours: _carry_server(theirs, ours),
                )
        except Refusal as refusal:
            notify.refuse(listener, note, _errno_of(refusal))
            return Served(request, refusal)
        return _swap_in(listener, note, request, result, their_fd=their_fd, theirs=theirs, cloexec=cloexec)
    finally:
        theirs.close()


def _swap_in(
    listener: int,
    note: notify.Notification,
    request: protocol.Bind | protocol.Connect,
    result: Answer,
    *,
    their_fd: int,
    theirs: socket.socket,
    cloexec: bool,
) -> Served | None:
    """Put the broker's socket (bound, or connected) at the program's fd number, if that still
    holds ``theirs``, the socket the broker checked; ``result.fd`` is closed here."""
    assert result.fd is not None
    try:
        if not _same_object(note.pid, their_fd, theirs):
            # Another thread put something else at this number: swapping ours in would
            # replace an object nobody checked. Refuse; our socket (and port) goes away.
            notify.refuse(listener, note, errno.EBADF)
            return Served(
                request, Refusal(protocol.ErrorCode.FAILED, f"the socket changed during {request.op}")
            )
        notify.replace_fd(listener, note, result.fd, their_fd, cloexec=cloexec)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        notify.refuse(listener, note, exc.errno or errno.EIO)
        return Served(
            request, Refusal(protocol.ErrorCode.FAILED, f"could not hand the socket over: {exc.strerror}")
        )
    finally:
        os.close(result.fd)
    notify.succeed(listener, note, 0)
    return Served(request, Answer(result.result, rule=result.rule))


def _bind_sockaddr(data: bytes, family: int, addrlen: int) -> tuple[str, int, BindAddress]:
    """(host as the rules see it, port, address to bind) from the program's sockaddr, as the kernel reads it.

    An IPv4-mapped IPv6 address is decided as the IPv4 address it reaches and
    bound as written. Like the kernel, an AF_INET socket takes AF_UNSPEC with
    INADDR_ANY as 0.0.0.0. Anything else malformed gets the kernel's errno.
    """
    if family == socket.AF_INET:
        if addrlen < 16 or len(data) < 16:
            raise _Unserved(errno.EINVAL)
        sa_family, port = struct.unpack_from("=H", data)[0], struct.unpack_from("!H", data, 2)[0]
        v4 = ipaddress.IPv4Address(data[4:8])
        if sa_family != socket.AF_INET and not (sa_family == socket.AF_UNSPEC and int(v4) == 0):
            raise _Unserved(errno.EAFNOSUPPORT)
        return str(v4), port, (str(v4), port)
    if addrlen < 24 or len(data) < 24:
        raise _Unserved(errno.EINVAL)
    if struct.unpack_from("=H", data)[0] != socket.AF_INET6:
        raise _Unserved(errno.EAFNOSUPPORT)
    port = struct.unpack_from("!H", data, 2)[0]
    # sin6_flowinfo means nothing to bind() (the kernel ignores it); a value Python would
    # refuse (over 20 bits) once raised out of the broker, so it is dropped, never passed on.
    v6 = ipaddress.IPv6Address(data[8:24])
    scope = struct.unpack_from("=I", data, 24)[0] if len(data) >= 28 else 0
    mapped = v6.ipv4_mapped
    return str(mapped if mapped is not None else v6), port, (str(v6), port, 0, scope)


def _carry_server(theirs: socket.socket, ours: socket.socket) -> None:
    """What the program set on its socket before bind(): O_NONBLOCK and the server options."""
    flags = fcntl.fcntl(theirs.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(ours.fileno(), fcntl.F_SETFL, flags & os.O_NONBLOCK)
    options = _SERVER_OPTIONS + (_V6_OPTIONS if theirs.family == socket.AF_INET6 else ())
    for level, option in options:
        try:
            value = theirs.getsockopt(level, option)
            if value != ours.getsockopt(level, option):
                ours.setsockopt(level, option, value)
        except OSError:
            continue
    try:
        linger = theirs.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER.size)
        if _LINGER.unpack(linger)[0]:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    except (OSError, struct.error):
        pass


def _same_object(pid: int, fd: int, sock: socket.socket) -> bool:
    """Whether the caller's fd ``fd`` still refers to the very socket the broker copied and checked.

    The kernel has no compare-and-swap for SECCOMP_IOCTL_NOTIF_ADDFD, so this
    is checked just before the swap. Whatever a thread does in the instant
    between, the socket swapped in is bound to an address the policy allows:
    the race can only cost the program the fd it put there.
    """
    try:
        there = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return False
    mine = os.fstat(sock.fileno())
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


# -- reading the caller ------------------------------------------------------------


def _their_socket(note: notify.Notification) -> tuple[int, socket.socket]:
    """The fd number in the call's first argument, and a copy of the socket it holds."""
    their_fd = _s32(note.args[0])
    copy = _their_fd(note.pid, their_fd)
    try:
        return their_fd, socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        # Not a socket. Refused here, never handed back: by the time the kernel looked fd N
        # up again, a thread could have put a socket of the broker's there.
        raise _Unserved(errno.ENOTSOCK) from None


def _sockaddr_arg(note: notify.Notification) -> bytes:
    """The sockaddr of a connect or bind, read once (bounded by the size the kernel accepts)."""
    addrlen = note.args[2] & 0xFFFFFFFF
    return _read_upto(note.pid, note.args[1], min(addrlen, _SOCKADDR_MAX))


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _create_mode(note: notify.Notification) -> int:
    """The mode argument of an open-family call (registers: the child cannot change them later)."""
    index = {_linux.NR_OPEN: 2, _linux.NR_CREAT: 1}.get(note.nr, 3)
    return note.args[index] & 0xFFFFFFFF


def _open_args(note: notify.Notification) -> tuple[int, int, int]:
    """(dirfd, path address, flags) of an open-family call."""
    args = note.args
    if note.nr == _linux.NR_OPEN:
        return _linux.AT_FDCWD, args[0], args[1] & 0xFFFFFFFF
    if note.nr == _linux.NR_CREAT:
        return _linux.AT_FDCWD, args[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    return _s32(args[0]), args[1], args[2] & 0xFFFFFFFF


def _read_upto(pid: int, address: int, size: int) -> bytes:
    try:
        return _linux.process_vm_read(pid, address, size)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise _Unserved(errno.ESRCH) from None  # answered to nobody: the caller is gone
        raise _Unserved(errno.EFAULT) from None


def _read_path(pid: int, address: int) -> str:
    """The NUL-terminated path at ``address``, up to PATH_MAX bytes, read before anything is decided.

    Read up to the end of its page first: nearly every path ends there, and a
    second page costs the kernel another page to pin. Only a path running on
    past it is read on, up to PATH_MAX bytes in all (what cannot be read
    there ends it, as it would end a single read).
    """
    first = min(_linux.PATH_MAX, _linux.PAGE_SIZE - address % _linux.PAGE_SIZE)
    raw = _read_upto(pid, address, first)
    if len(raw) == first < _linux.PATH_MAX and b"\0" not in raw:
        try:
            raw += _linux.process_vm_read(pid, address + first, _linux.PATH_MAX - first)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise _Unserved(errno.ESRCH) from None
    end = raw.find(b"\0")
    if end < 0:
        raise _Unserved(errno.ENAMETOOLONG if len(raw) == _linux.PATH_MAX else errno.EFAULT)
    if end == 0:
        raise _Unserved(errno.ENOENT)
    return os.fsdecode(raw[:end])


def _base(pid: int, dirfd: int) -> str:
    """The directory a relative path starts from, as the child sees it."""
    link = f"/proc/{pid}/cwd" if dirfd == _linux.AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
    try:
        base = os.readlink(link)
    except OSError:
        raise _Unserved(None) from None  # a bad dirfd: the kernel answers EBADF itself
    if not base.startswith("/"):
        raise _Unserved(None)  # not a directory (a socket, a pipe): the kernel's ENOTDIR
    return base


def _their_fd(pid: int, fd: int) -> int:
    try:
        pidfd = _linux.pidfd_open(pid, _linux.PIDFD_THREAD)
    except OSError:
        raise _Unserved(errno.ESRCH) from None
    try:
        return _linux.pidfd_getfd(pidfd, fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise _Unserved(errno.EBADF) from None  # answered here: never a second lookup of fd N
        raise _Unserved(errno.ESRCH) from None
    finally:
        os.close(pidfd)


def _fd_cloexec(pid: int, fd: int) -> bool:
    """Whether the caller's fd ``fd`` is close-on-exec (a copy taken by pidfd_getfd always is).

    Read as bytes, in one read: the file is a few short lines, and a text file
    object costs more than the rest of the call.
    """
    try:
        info = os.open(f"/proc/{pid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(info, 4096)
        finally:
            os.close(info)
        for line in text.split(b"\n"):
            if line.startswith(b"flags:"):
                return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    except (OSError, ValueError):
        pass
    return True  # unknown: the safer of the two (the socket does not leak into an exec)


_OWN_NETNS = os.stat("/proc/self/ns/net").st_ino


def _in_own_netns(sock: socket.socket) -> bool:
    """Whether the socket lives in the child's network namespace (it made it) rather than ours."""
    try:
        nsfd = fcntl.ioctl(sock.fileno(), _SIOCGSKNS)
    except OSError:
        return False
    try:
        return os.fstat(nsfd).st_ino != _OWN_NETNS
    finally:
        os.close(nsfd)


def _sockaddr(data: bytes, family: int) -> tuple[str, int] | None:
    """(address, port) from a sockaddr_in/sockaddr_in6 of the socket's own family."""
    if len(data) < 2 or struct.unpack_from("=H", data)[0] != family:
        return None
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack_from("!H", data, 2)[0]
        return str(ipaddress.IPv4Address(data[4:8])), port
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack_from("!H", data, 2)[0]
        address = ipaddress.IPv6Address(data[8:24])
        mapped = address.ipv4_mapped
        return str(mapped if mapped is not None else address), port
    return None


# -- deciding ------------------------------------------------------------------


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _normalise(path: str) -> str:
    """Lexically, as the broker's rules are written; the open itself is beneath the grant anyway."""
    if len(path) > protocol.MAX_PATH:  # the request could not carry it
        raise _Unserved(errno.ENAMETOOLONG)
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/")


def _unserved_kind(flags: int) -> str | None:
    """What the broker never hands out, named for the refusal (rule 3: no O_PATH, no O_TMPFILE)."""
    if flags & os.O_TMPFILE == os.O_TMPFILE:
        return "O_TMPFILE opens"
    if flags & os.O_PATH:
        return "O_PATH opens"
    if flags & os.O_DIRECTORY:
        return (
            "directories (a directory fd would let the child open around the broker; "
            "list with privsep.client.listdir)"
        )
    return None


def _mode(flags: int) -> protocol.OpenMode:
    """The client-API mode with the same meaning as these open flags."""
    access = flags & os.O_ACCMODE
    plus = access == os.O_RDWR
    if access == os.O_RDONLY:
        return "r"
    if flags & os.O_CREAT and flags & os.O_EXCL:
        return "x+" if plus else "x"
    if flags & os.O_TRUNC:
        return "w+" if plus else "w"
    if flags & os.O_APPEND:
        return "a+" if plus else "a"
    return "r+"  # writing in place (a write-only open gets read too: the mode needs the grant of both)


def _perform_open(
    services: Services, request: protocol.Open, flags: int, ids: tuple[int, int] | None
) -> tuple[protocol.Open, Answer | Refusal]:
    """Open as the flags say; "open or create" without O_TRUNC is "r+", else "x+" when missing."""
    result = perform(services, request, ids)
    missing = isinstance(result, Refusal) and result.code is protocol.ErrorCode.NOT_FOUND
    if missing and flags & os.O_CREAT and request.mode == "r+":
        create = protocol.Open(
            id=0, path=request.path, mode="x" if flags & os.O_ACCMODE == os.O_WRONLY else "x+"
        )
        created = perform(services, create, ids)
        if not (isinstance(created, Refusal) and created.errno == errno.EEXIST):
            return create, created
        result = perform(services, request, ids)  # created by someone else meanwhile: open that
    return request, result


def _errno_of(refusal: Refusal) -> int:
    """What an unmodified program sees: EACCES for a denial, else the failure's own errno."""
    if refusal.code is protocol.ErrorCode.DENIED:
        return errno.EACCES
    if refusal.code is protocol.ErrorCode.NOT_FOUND:
        return errno.ENOENT
    return refusal.errno or errno.EIO
