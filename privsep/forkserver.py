"""The forkserver start method: a clean process that forks confined children fast.

Forking the broker would copy its memory into every child, and a fresh
interpreter costs ~10 ms plus ~90 ms of pydantic import. So, as in
``multiprocessing``, a ``Sandbox(start_method="forkserver")`` starts one
helper when it opens: a fresh interpreter (``python -m privsep.forkserver``)
with an environment of its own (never the host's: no secret in it), which
imports what children need, then waits. For each child the broker sends it
the plan (JSON, :mod:`privsep.plan.wire`) and the child's five fds
(SCM_RIGHTS). It clones the sandbox's init itself, as the zygote does
(``confine.spawn.start_sandbox``), and init runs the same confinement chain
as ``spawn``'s.
For a ``Sandbox.call`` the confined process then runs the function in that
preloaded interpreter instead of exec'ing a new one.

The broker may also ask the forkserver to :meth:`~ForkServer.prepare`:
run a ``module:function`` of its own choosing in the forkserver itself,
once, so that every child forked afterwards starts with what it imported
(the pytest plugin preloads pytest and a test module this way). That code
runs unconfined, as the broker would run it: only the broker, which holds
the forkserver's one socket, can name it. A prepare frame carries no fds; a
plan frame always does.

The broker does not wait for the forkserver to start: its first request
does (``READY``), so that the interpreter's start and imports overlap the
broker's own set-up, as the zygote's do. The pytest plugin starts one even
earlier, while pytest collects, and hands it to the Sandbox it opens
(:func:`handing_over`). The broker's side of this module imports nothing the
forkserver preloads (pydantic, the client): only the forkserver does.

The forkserver trusts only the broker, whose socketpair is its fd 3. It
dies with the broker (parent-death signal), and the sandboxes die with it.
"""

from __future__ import annotations

import _socket
import contextlib
import gc
import importlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from typing import Any

import prctl

from privsep import channel
from privsep.errors import ConfinementError
from privsep.plan import wire
from privsep.plan.spawnplan import Spawned, SpawnPlan, claim_host_ids

_READY = b'{"ready":true}'
_PREPARED = b'{"prepared":true}'
_MAX_REASON = 2000


class ForkServer:
    """The broker's handle on its forkserver.

    Made, it has started the forkserver's interpreter and not waited for it:
    the start (~150 ms of imports) overlaps whatever the broker does next, and
    the first request waits for READY. Inside :func:`handing_over`, the
    ``ForkServer()`` that ``assemble`` makes is the one handed over, started
    earlier (the pytest plugin starts it while pytest collects).
    """

    def __new__(cls) -> ForkServer:
        handed: ForkServer | None = getattr(_handover, "server", None)
        if handed is not None:
            _handover.server = None  # taken once: a second Sandbox in the block starts its own
            return handed
        return super().__new__(cls)

    def __init__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            return  # handed over (see __new__): started already
        ours, theirs = channel.socketpair()
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            self._proc = subprocess.Popen(
                # -P: the host's working directory is not put on sys.path.
                [sys.executable, "-P", "-m", "privsep.forkserver", str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock: _socket.socket = ours
        self._ready = False
        self._out_of_step = False  # an exchange was cut between request and answer (see _recv)
        self._asked = 0  # prepare requests sent whose answers are not read yet
        self._answers: deque[str | None] = deque()  # answers read (by a spawn) and not yet taken

    def wait_ready(self) -> None:
        """Wait for the forkserver's READY (once); ConfinementError if it did not start."""
        if self._ready:
            return
        frame = self._recv()
        if frame is None or frame.data != _READY:
            if frame is not None:
                channel.close_fds(frame.fds)
            raise ConfinementError("forkserver", "the forkserver did not start (see its stderr)")
        self._ready = True

    def spawn(self, plan: SpawnPlan, *, stdio: tuple[int, int, int]) -> Spawned:
        self._in_step()
        self.wait_ready()
        while self._asked:  # the forkserver answers in order: the prepares asked before come first
            self._answers.append(self._prepare_answer())
        # The broker claims the host id and holds it: it is the one that sees the sandbox end.
        plan, held = claim_host_ids(plan)
        sent = False
        try:
            broker_chan, child_chan = channel.socketpair()
            broker_ctl, child_ctl = channel.socketpair()
            try:
                try:
                    channel.send(
                        self._sock, wire.encode(plan), (*stdio, child_chan.fileno(), child_ctl.fileno())
                    )
                    sent = True
                finally:
                    child_chan.close()
                    child_ctl.close()
                frame = self._recv()
            except BaseException:
                broker_chan.close()  # a sandbox started all the same ends at its first request
                broker_ctl.close()
                raise
            if frame is None or len(frame.fds) != 1:
                why = "the forkserver did not start the child"
                if frame is not None:
                    channel.close_fds(frame.fds)
                    with contextlib.suppress(ValueError, AttributeError):
                        why = f"{why}: {json.loads(frame.data)['error']}"
                broker_chan.close()
                broker_ctl.close()
                raise ConfinementError("forkserver", why)
            pid = int(json.loads(frame.data)["pid"])
        except BaseException:
            if held is not None and not (sent and self._out_of_step):
                # Answered (or never asked): no sandbox runs as the id. Cut before the answer, one
                # may: its claim is kept until the broker ends, so no other sandbox gets the id.
                held.release()
            raise
        return Spawned(
            pid=pid, pidfd=frame.fds[0], channel=broker_chan, control=broker_ctl, host_ids=held, ours=False
        )

    def prepare(self, target: str, *args: Any) -> str | None:
        """Run ``package.module:function(*args)`` in the forkserver, unconfined, before the next fork.

        What it imports (or leaves in memory) is in every child forked after
        it. ``args`` are JSON values. Returns None, or why it failed: the
        forkserver carries on, its children then do without.
        """
        self.ask_prepare(target, *args)
        return self.prepared()

    def ask_prepare(self, target: str, *args: Any) -> None:
        """:meth:`prepare`'s request alone, sent now: the forkserver runs it once it has started,
        while this process does other things. :meth:`prepared` gives its answer."""
        self._in_step()
        channel.send(self._sock, json.dumps({"prepare": target, "args": list(args)}).encode())
        self._asked += 1

    def prepared(self) -> str | None:
        """The answer to the oldest :meth:`ask_prepare` not answered yet (waiting for it)."""
        if self._answers:
            return self._answers.popleft()
        if not self._asked:
            raise ValueError("no prepare request is waiting for its answer")
        self.wait_ready()
        return self._prepare_answer()

    def _prepare_answer(self) -> str | None:
        frame = self._recv()
        self._asked -= 1
        if frame is None or frame.fds:
            if frame is not None:
                channel.close_fds(frame.fds)
            raise ConfinementError("forkserver", "the forkserver did not answer a prepare request")
        if frame.data == _PREPARED:
            return None
        reason = json.loads(frame.data).get("error")
        return str(reason) if reason else "the forkserver gave no reason"

    def _recv(self) -> channel.Frame | None:
        """The forkserver's next answer. The forkserver answers in order: an exchange cut between
        its request and its answer (an exception, ^C) would leave the next request reading the
        previous one's answer, and a sandbox could get another's pid. So a cut exchange puts the
        handle out of step for good: every later request is refused."""
        self._in_step()
        self._out_of_step = True
        frame = channel.recv(self._sock)
        self._out_of_step = False
        return frame

    def _in_step(self) -> None:
        if self._out_of_step:
            raise ConfinementError(
                "forkserver",
                "an earlier request was interrupted before the forkserver answered; open a new Sandbox",
            )

    def close(self) -> None:
        self._sock.close()
        self._proc.kill()
        self._proc.wait()


_handover = threading.local()


@contextlib.contextmanager
def handing_over(server: ForkServer) -> Iterator[None]:
    """In this block, on this thread, the next ``ForkServer()`` made is ``server``, started earlier.

    Any forkserver is started the same way (a fresh interpreter, its own
    environment, the broker's socket alone), so one started before a Sandbox
    opens serves it as one the Sandbox starts would. ``server`` is the
    block's: whoever takes it closes it, and if no one has by the end, the
    block closes it.
    """
    _handover.server = server
    try:
        yield
    finally:
        if _handover.server is server:
            _handover.server = None
            server.close()


def _serve(fd: int, broker_pid: int) -> int:  # pragma: no cover - runs in the forkserver process
    # Imported here, in the forkserver alone (a broker that starts one never pays for them),
    # once for every child: _callee (and with it the client) is what a Sandbox.call child
    # runs without exec'ing anything.
    from privsep import _callee  # noqa: F401, PLC0415 - preloaded for the children
    from privsep.confine.inside import broker_pidfd, reset_process_state  # noqa: PLC0415
    from privsep.confine.spawn import start_sandbox  # noqa: PLC0415

    prctl.set_name("privsep-forksrv")
    broker = broker_pidfd(broker_pid)
    if broker is None:
        return 1
    # Signals as a sandbox starts with them, once; the preloaded objects out of the collector's
    # reach, so that its collections here dirty no page the children share.
    reset_process_state()
    gc.enable()
    _warm_call_replies()
    gc.freeze()
    sock = socket.socket(fileno=fd)
    channel.send(sock, _READY)
    sock.settimeout(1.0)  # wake up now and then to reap finished sandboxes
    lifelines: dict[int, int] = {}  # init's pid: the lifeline held until init is reaped
    while True:
        while True:
            try:
                reaped = os.waitpid(-1, os.WNOHANG)[0]
            except ChildProcessError:
                break
            if reaped == 0:
                break
            if reaped in lifelines:
                os.close(lifelines.pop(reaped))
        if select.select([broker], [], [], 0)[0]:
            return 0  # the broker has exited (a copy of its socket may live on in a fork)
        try:
            frame = channel.recv(sock)
        except TimeoutError:
            continue
        if frame is None:
            return 0
        if not frame.fds:
            channel.send(sock, _prepare(frame.data))
            continue
        try:
            plan = wire.decode(SpawnPlan, frame.data)
            pid, lifeline = start_sandbox(plan, frame.fds)  # init itself, cloned: no monitor
            if lifeline is not None:
                lifelines[pid] = lifeline
            pidfd = os.pidfd_open(pid)
        except (ConfinementError, ValueError, OSError) as exc:
            # This start fails, not the forkserver: the sandboxes it runs carry on.
            reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            channel.send(sock, json.dumps({"error": reason[:_MAX_REASON]}).encode())
            continue
        finally:
            channel.close_fds(frame.fds)
        try:
            channel.send(sock, json.dumps({"pid": pid}).encode(), [pidfd])
        finally:
            os.close(pidfd)


def _warm_call_replies() -> None:  # pragma: no cover - runs in the forkserver process
    """Build, once, the reply validators every ``Sandbox.call`` child needs (hello, call_args,
    call_return), so that its children inherit them.

    The protocol builds each op's typed reply model on first use, in the process that uses
    it: a pydantic generic model and its schema, about 10 ms of every call child's life
    (two thirds of a ``Sandbox.call`` of ``os:getpid``) when each child built its own.
    """
    from privsep import protocol  # noqa: PLC0415 - see _serve

    for op in ("hello", "call_args", "call_return"):
        protocol._typed_replies(protocol.RESULT_MODELS[op])


def _prepare(data: bytes) -> bytes:  # pragma: no cover - runs in the forkserver process
    try:
        body = json.loads(data)
        module, _, function = body["prepare"].partition(":")
        getattr(importlib.import_module(module), function)(*body["args"])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit, pytest's Skipped...: the children do without it
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return json.dumps({"error": reason[:_MAX_REASON]}).encode()
    return _PREPARED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_serve(int(sys.argv[1]), int(sys.argv[2])))
