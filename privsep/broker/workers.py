"""Threads for the broker's slow operations, and the lane each sandbox's slow calls wait in.

The loop thread never blocks: resolving and connecting run here. A worker
hands its result back by putting a callable into the loop's queue and waking
it (``done``); the loop runs it on its own thread, so only the loop ever
touches a sandbox's channel, selector entries and report.
"""

from __future__ import annotations

import _thread
import os
import sys

from privsep._lazy import lazy_module
from privsep._printable import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import threading
    from collections import deque
    from collections.abc import Callable
else:
    # The C type collections.deque is, without the collections package (~1 ms of a warm run)
    from _collections import deque

    # With the first slow operation: a run whose sandbox asks for none starts no thread, and
    # never imports them (~1 ms). The locks are _thread's, which threading.Lock is.
    queue = lazy_module("queue", globals())
    threading = lazy_module("threading", globals())

_KEPT = 4  # idle threads kept for the next slow operation
_MAX_TRACEBACK = 4096  # characters of a traceback printed for a failed continuation
_IDLE_S = 30.0  # an idle thread beyond _KEPT ends after this long


class Workers:
    """Daemon threads for slow operations: one for each operation in flight.

    A fixed pool let sandboxes whose operations hang (a connect to a black hole, a
    listing of a huge directory) occupy every thread, and a sibling's request then
    waited behind them. Each sandbox has a bounded number of slow operations in flight
    (one request, one transparent call, and with egress its resolver's host lookups,
    ``dns.MAX_LOOKUPS``, and its proxies' connects, ``proxy.MAX_CONNECTING`` each), so it
    holds a bounded number of threads, and a sibling's operation always gets a thread
    at once. Up to _KEPT idle threads are kept; the others end after _IDLE_S. Not
    concurrent.futures: its threads are joined at interpreter exit, so one connect stuck
    in its timeout would hold ``privsep run`` open.
    """

    def __init__(self, done: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] | None = None  # made by the first submit
        self._done = done
        self._lock = _thread.allocate_lock()
        self._idle = 0  # threads waiting for a job, not yet promised to one

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._jobs is None:  # the first job: no thread exists yet to have read the None
                self._jobs = queue.SimpleQueue()
            jobs = self._jobs
            start = self._idle == 0
            if not start:
                self._idle -= 1  # promised: some waiting thread takes this job
        jobs.put(job)
        if start:
            threading.Thread(target=self._run, name="privsep-worker", daemon=True).start()

    def _run(self) -> None:
        jobs = self._jobs
        assert jobs is not None  # made before the thread that runs this
        while True:
            try:
                job = jobs.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > _KEPT:
                        self._idle -= 1
                        return
                continue
            job()
            self._done()
            with self._lock:
                self._idle += 1


class Lane:
    """One sandbox's slow transparent calls, one in flight at a time (guarantee 9).

    A sandbox with many threads connecting to a black hole then occupies one
    worker, not all of them: its siblings' calls are never queued behind it.
    The waiting calls stay unanswered (their threads blocked in the kernel);
    once the sandbox has ended (``alive`` is false), they are dropped, never run.
    """

    def __init__(self, workers: Workers, alive: Callable[[], bool]) -> None:
        self._workers = workers
        self._alive = alive
        self._lock = _thread.allocate_lock()
        self._waiting: deque[tuple[Callable[[], None], Callable[[], None]]] = deque()  # (run, drop)
        self._running = False

    def submit(self, run: Callable[[], None], drop: Callable[[], None]) -> None:
        with self._lock:
            if self._running:
                self._waiting.append((run, drop))
                return
            self._running = True
        self._workers.submit(lambda: self._run(run))

    def _run(self, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            following: Callable[[], None] | None = None
            with self._lock:
                while self._waiting:
                    nxt, drop = self._waiting.popleft()
                    if self._alive():
                        following = nxt
                        break
                    try:
                        drop()
                    except OSError:
                        pass
                if following is None:
                    self._running = False
            if following is not None:
                chosen = following
                self._workers.submit(lambda: self._run(chosen))


class Handback:
    """What workers finished, for the loop to run on its own thread: a queue and a wake-up pipe.

    A worker may finish after the broker closed (``Broker.close`` does not wait for a
    connect the child gave 600 s): the pipe's numbers are then the host's again, so a
    wake-up after ``close`` writes nothing (under the lock that ``close`` takes).
    """

    def __init__(self) -> None:
        self._done: deque[Callable[[], None]] = deque()  # appends and pops are thread-safe
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = _thread.allocate_lock()
        self._closed = False

    def put(self, then: Callable[[], None]) -> None:
        """From a worker: run ``then`` on the loop (the loop is woken when the job returns)."""
        self._done.append(then)

    def wake(self) -> None:
        with self._lock:
            try:
                if not self._closed:
                    os.write(self._wake_w, b".")
            except OSError:  # BlockingIOError too: a full pipe already says so
                pass

    def run(self) -> None:
        """On the loop: run everything handed back so far."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except OSError:
            pass
        while True:
            try:
                then = self._done.popleft()
            except IndexError:
                return
            try:
                then()
            except Exception:  # a bug of ours: the loop, and every other sandbox, carry on (rule 6)
                import traceback  # noqa: PLC0415 - rare: not on every run's import path (linecache, tokenize)

                detail = printable(traceback.format_exc()[-_MAX_TRACEBACK:], lines=True)
                print(
                    "privsep: internal error while finishing a worker's result (the broker and its "
                    f"sandboxes carry on); please report it:\n{detail}",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.wake_fd)
            os.close(self._wake_w)
