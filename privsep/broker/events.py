"""The loop's epoll, with what each watched fd is for (its role) and whose it is.

One place registers, modifies and forgets fds, so no part of the broker can
leave a closed fd registered (epoll would then report a stranger's fd).

It polls ``select.epoll`` itself rather than through ``selectors``: the loop
needs only which fds are ready and their (owner, role), and the selector's
key objects, event translation and per-event tuples cost ~8 us per wake-up
of a pinned round trip (README, Performance). What ``selectors`` guaranteed
is kept: a fd registered twice is a KeyError, no events or unknown ones a
ValueError, a closed file object is still found (by identity) to forget it,
and a wait of a fraction of a millisecond is rounded up, never down to a
busy poll.
"""

from __future__ import annotations

import math
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any, Literal, Protocol

    Role = Literal[
        "channel",  # a sandbox's request channel
        "control",  # reports from the sandbox's own processes
        "monitor",  # the monitor's pidfd: the sandbox's first process exited
        "init",  # init's pidfd: the pid namespace is gone
        "listener",  # the seccomp listener: a syscall for the broker to decide
        "oom",  # cgroup v1: the sandbox ran out of memory
        "wakeup",  # a worker finished
        "relay_child",  # a relay's end on the sandbox's side
        "relay_peer",  # a relay's end on the outside
        "external",  # Broker.watch(): a callback sits where the sandbox would
        "terminal",  # the sandbox's pty relay
        "egress",  # the sandbox's resolver and proxies (egress.py): the owner is the fd's handler
    ]

    class _HasFileno(Protocol):
        def fileno(self) -> int: ...

    FileObj = socket.socket | _HasFileno | int

#: The interest bits callers combine (the values ``selectors`` gives them, 1 and 2).
READ = 1
WRITE = 2
_EPOLL = {READ: select.EPOLLIN, WRITE: select.EPOLLOUT, READ | WRITE: select.EPOLLIN | select.EPOLLOUT}


class _Watched:
    """A watched fd: what it was registered as, its interest, and what select() reports for it."""

    __slots__ = ("events", "fileobj", "ready")

    def __init__(self, fileobj: FileObj, events: int, ready: tuple[int, Any, Role]) -> None:
        self.fileobj = fileobj  # as registered: found by identity once it is closed
        self.events = events
        self.ready = ready  # made once at registration


def _fd_of(fileobj: FileObj) -> int:
    """``selectors``' rule: an int is the fd, anything else has ``fileno()``; a negative one is invalid."""
    fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class Events:
    def __init__(self) -> None:
        self._epoll = select.epoll()  # close-on-exec
        self._fds: dict[int, _Watched] = {}

    def _lookup(self, fileobj: FileObj) -> int:
        """The fd ``fileobj`` was registered under, even if it has been closed since (ValueError if not)."""
        try:
            return _fd_of(fileobj)
        except ValueError:
            for fd, watched in self._fds.items():
                if watched.fileobj is fileobj:
                    return fd
            raise

    def watch(self, fd: FileObj, role: Role, owner: Any, events: int = READ) -> None:
        mask = _EPOLL.get(events)
        if mask is None:
            raise ValueError(f"Invalid events: {events!r}")
        number = _fd_of(fd)
        if number in self._fds:
            raise KeyError(f"{fd!r} (FD {number}) is already registered")
        self._epoll.register(number, mask)
        self._fds[number] = _Watched(fd, events, (number, owner, role))

    def want(self, fd: FileObj, events: int, role: Role, owner: Any) -> None:
        """Watch ``fd`` for exactly ``events`` now (none: not at all)."""
        number = self._lookup(fd)
        watched = self._fds.get(number)
        if watched is None:
            if events:
                self.watch(fd, role, owner, events)
            return
        if not events:
            self.forget(fd)
        elif watched.events != events:
            mask = _EPOLL.get(events)
            if mask is None:
                raise ValueError(f"Invalid events: {events!r}")
            try:
                self._epoll.modify(number, mask)
            except BaseException:
                self.forget(fd)
                raise
            self._fds[number] = _Watched(watched.fileobj, events, (number, owner, role))

    def forget(self, fd: FileObj) -> None:
        try:
            number = self._lookup(fd)
        except ValueError:
            return
        if self._fds.pop(number, None) is None:
            return
        try:
            self._epoll.unregister(number)
        except OSError:  # closed since it was registered: the kernel dropped it
            pass

    def select(self, timeout: float | None) -> list[tuple[int, Any, Role]]:
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:
            wait = math.ceil(timeout * 1e3) * 1e-3  # epoll counts milliseconds: wait at least timeout
        fds = self._fds
        try:
            ready = self._epoll.poll(wait, len(fds) or 1)
        except InterruptedError:
            return []
        return [fds[fd].ready for fd, _ in ready if fd in fds]

    def fileno(self) -> int:
        return self._epoll.fileno()

    def close(self) -> None:
        self._epoll.close()
        self._fds.clear()
