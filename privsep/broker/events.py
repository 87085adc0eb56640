"""The loop's selector, with what each watched fd is for (its role) and whose it is.

One place registers, modifies and forgets fds, so no part of the broker can
leave a closed fd registered (the selector would then report a stranger's fd).
"""

from __future__ import annotations

import contextlib
import selectors
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
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Events:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()

    def watch(self, fd: FileObj, role: Role, owner: Any, events: int = READ) -> None:
        self._sel.register(fd, events, (owner, role))

    def want(self, fd: FileObj, events: int, role: Role, owner: Any) -> None:
        """Watch ``fd`` for exactly ``events`` now (none: not at all)."""
        try:
            key = self._sel.get_key(fd)
        except KeyError:
            if events:
                self._sel.register(fd, events, (owner, role))
            return
        if not events:
            self._sel.unregister(fd)
        elif key.events != events:
            self._sel.modify(fd, events, (owner, role))

    def forget(self, fd: FileObj) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    def select(self, timeout: float | None) -> list[tuple[int, Any, Role]]:
        return [(key.fd, *key.data) for key, _ in self._sel.select(timeout)]

    def fileno(self) -> int:
        return self._sel.fileno()

    def close(self) -> None:
        self._sel.close()
