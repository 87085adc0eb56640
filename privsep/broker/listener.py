"""Serving a sandbox's seccomp listener: receive a notification, decide it, answer it.

The decision is verdicts.decide_syscall (pure); transparently brokered calls
go to transparent.py, whose slow ones (connect) wait in the sandbox's lane
for a worker. Every notification is answered, except a call that kills the
sandbox: it stays blocked until SIGKILL ends it.
"""

from __future__ import annotations

import errno
import time

from privsep import _signals
from privsep._lazy import lazy_module
from privsep.broker import notify
from privsep.broker.outcome import Outcome
from privsep.broker.requests import MAX_RELAYS, hung_up
from privsep.broker.verdicts import decide_syscall

TYPE_CHECKING = False
if TYPE_CHECKING:
    from privsep import protocol
    from privsep.broker import answers, transparent
    from privsep.broker.child import Child
    from privsep.broker.events import Events
    from privsep.broker.lifecycle import Lifecycle
    from privsep.broker.report import Recorder
    from privsep.broker.requests import RequestServer
    from privsep.broker.transparent import Transparent
    from privsep.broker.workers import Handback
    from privsep.plan import filter as syscall_filter
else:
    # Loaded with the first notification that is more than a hang-up: a sandbox whose
    # command never calls what the broker decides (``privsep run -- /bin/true``) pays for none.
    protocol = lazy_module("privsep.protocol", globals())  # pydantic
    answers = lazy_module("privsep.broker.answers", globals())
    transparent = lazy_module("privsep.broker.transparent", globals())
    syscall_filter = lazy_module("privsep.plan.filter", globals())


class ListenerServer:
    def __init__(
        self,
        events: Events,
        recorder: Recorder,
        lifecycle: Lifecycle,
        requests: RequestServer,
        handback: Handback,
    ) -> None:
        self._events = events
        self._recorder = recorder
        self._lifecycle = lifecycle
        self._requests = requests
        self._handback = handback

    def on_listener(self, child: Child) -> None:
        listener = child.procs.listener
        assert listener is not None
        try:
            note = notify.receive(listener)
        except OSError:
            self._events.forget(listener)  # every process under the filter is gone
            return
        if note is None:
            if hung_up(listener):
                # No process is left under the filter: stop watching, or an
                # always-readable fd would spin the loop until init exits.
                self._events.forget(listener)
            return
        try:
            verdict = decide_syscall(note.nr, note.arch, child.syscalls, syscall_filter.syscall_name)
        except Exception as exc:  # a bug of ours (or an import that failed mid-run): rule 6
            self._bug(child, listener, note, exc)
            return
        if verdict.action == "serve":
            self._serve(child, listener, note)
            return
        assert verdict.audited is not None
        self._recorder.syscall(child, verdict.name, verdict.audited)
        if verdict.action == "kill":
            detail = f"killed by seccomp: the command called {verdict.name}, {verdict.why}"
            self._lifecycle.kill(
                child,
                Outcome(
                    "seccomp",
                    128 + _signals.SIGSYS,
                    detail=detail,
                    signal=_signals.SIGSYS,
                    syscall=verdict.name,
                ),
            )
            # Never answered: the call stays blocked until SIGKILL ends the process.
            # An answer (even an error) would let it run on until the kill lands.
            return
        report = child.report
        if verdict.action == "allow":
            report.syscalls_used[verdict.name] = report.syscalls_used.get(verdict.name, 0) + 1
            notify.allow_for_learning(listener, note)
        else:
            report.syscall_denials[verdict.name] = report.syscall_denials.get(verdict.name, 0) + 1
            notify.refuse(listener, note, verdict.errno)

    def _serve(self, child: Child, listener: int, note: notify.Notification) -> None:
        """An open, connect or bind of a program that does not use the client (see transparent.py)."""
        start = time.monotonic()
        try:
            served = _transparent(child).serve(listener, note, child.services)
        except OSError:
            # The listener itself failed (the sandbox is going away): nothing left to answer.
            return
        except Exception as exc:
            self._bug(child, listener, note, exc)
            return
        if isinstance(served, transparent.Served):
            self._record(child, served, start)
        elif isinstance(served, transparent.Deferred):
            job = served.job

            def run() -> None:
                try:
                    result = job()
                except OSError:
                    return
                except Exception as exc:
                    # The job answered EIO on its own copy of the listener; the loop logs it.
                    failure = exc
                    self._handback.put(
                        lambda: self._recorder.internal_error(child, f"syscall {note.nr}", failure)
                    )
                    return
                if result is not None:
                    done = result
                    self._handback.put(
                        lambda: self._recorder.decision(child, done.request, start, done.result)
                    )

            child.lane.submit(run, served.drop)

    def _record(self, child: Child, served: transparent.Served, start: float) -> None:
        result = served.result
        if (
            isinstance(result, answers.Answer)
            and result.relay is not None
            and not self._requests.add_relay(child, result.relay)
        ):
            result.relay.close()  # the child's pipe now fails with EPIPE; the report says why
            refusal = answers.Refusal(
                protocol.ErrorCode.FAILED, f"too many append-only files open (at most {MAX_RELAYS})"
            )
            served = transparent.Served(served.request, refusal)
        self._recorder.decision(child, served.request, start, served.result)

    def _bug(self, child: Child, listener: int, note: notify.Notification, exc: Exception) -> None:
        """A bug of ours a call reached: logged, and the call fails with EIO (rule 6)."""
        self._recorder.internal_error(child, f"syscall {note.nr}", exc)
        try:
            notify.refuse(listener, note, errno.EIO)
        except OSError:
            pass


def _transparent(child: Child) -> Transparent:
    """What serves ``child``'s calls: made for the first one (loop.py), in ``_serve``'s ``try``."""
    calls = child.transparent
    if calls is None:
        assert child.make_transparent is not None  # "serve" is the verdict for its calls alone
        calls = child.transparent = child.make_transparent()
    return calls
