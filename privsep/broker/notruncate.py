"""Opening files whose fds can never be truncated, for grants without ``truncate``.

An fd keeps no "may not truncate" flag of its own: ``ftruncate`` on an fd
opened for writing succeeds, whatever rule handed it out. Landlock can hold
it, though. Since ABI 3 it decides ``LANDLOCK_ACCESS_FS_TRUNCATE`` when a file
is *opened*, records the answer in the open file, and ``ftruncate`` on that
file later fails with ``EACCES``, in whichever process the fd ends up.

So the broker keeps one thread whose Landlock domain handles only the
truncate right and allows it nowhere (every other access is unrestricted,
because it is not handled). Files for a grant without ``truncate`` are
opened on that thread; the fd handed to the child refuses ``ftruncate`` and
``O_TRUNC`` reopen tricks do not apply (an fd cannot be reopened with more
access through ``/proc/self/fd`` beyond Landlock either). Landlock domains
belong to one thread until ABI 8 (``LANDLOCK_RESTRICT_SELF_TSYNC``), so the
rest of the broker is untouched.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import prctl

from privsep import _linux
from privsep.errors import ConfinementError

T = TypeVar("T")
_Job = tuple[Callable[[], object], "queue.SimpleQueue[tuple[bool, object]]"]


class NoTruncateOpener:
    """A thread that runs opens inside a Landlock domain denying truncation (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="privsep-notruncate", daemon=True
        )
        self._thread.start()
        failure = ready.get()
        if failure is not None:
            raise ConfinementError(
                "landlock",
                f"cannot make the thread that opens files for grants without truncate ({failure}); "
                "such fds could be truncated (run `privsep doctor`)",
            )

    @staticmethod
    def _restrict() -> None:
        if _linux.landlock_abi_version() < 3:
            raise OSError(0, "Landlock ABI 3 (the truncate right) is missing")
        ruleset = _linux.landlock_create_ruleset(_linux.ACCESS_FS_TRUNCATE, 0, 0)
        try:
            # A domain needs no_new_privs or CAP_SYS_ADMIN; set per thread, it touches only this one.
            prctl.set_no_new_privs(1)
            _linux.landlock_restrict_self(ruleset)
        finally:
            os.close(ruleset)

    def _serve(self, ready: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            self._restrict()
        except BaseException as exc:  # reported to the constructor, which raises
            ready.put(exc)
            return
        ready.put(None)
        while True:  # a daemon thread: it lives as long as the broker
            fn, reply = self._jobs.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the restricted thread; its result, or its exception raised here."""
        reply: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]


_shared: NoTruncateOpener | None = None
_shared_lock = threading.Lock()


def shared() -> NoTruncateOpener:
    """The broker process's one restricted thread, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = NoTruncateOpener()
        return _shared
