"""``privsep.Sandbox``: the Python face for plugin hosts, daemons and test suites.

One ``Sandbox`` owns one broker and the policy's pinned grants, and serves
any number of children, one after another (``run``, ``call``) or at once
(``arun``, ``acall`` from asyncio). Nothing a child sends is unpickled:
``call`` moves JSON values both ways through the channel, validated on
arrival, and an exception in the child comes back as ``ChildError`` text.

Children's stdout and stderr are captured through the broker's own loop
(``Broker.watch``), capped at ``output_limit`` bytes each: past the cap
the output is drained and dropped, so a chatty child never blocks.
A child's stdin is a pipe too (``input``, or empty): a Sandbox never passes
the host's terminal to a child, so it needs no pty of its own (unlike
``privsep run``, see broker/terminal.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from privsep import cgroups
from privsep._assemble import Assembly, assemble, plan_for
from privsep.broker.loop import Broker, CallContext, Child
from privsep.broker.report import Denial as BrokerDenial
from privsep.errors import ChildError, ConfinementError, PrivsepError
from privsep.policy.grants import grants_to_extra
from privsep.policy.load import load_policy
from privsep.policy.model import Policy

__all__ = ["Denial", "RunResult", "Sandbox"]

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_CHUNK = 65536


@dataclass(frozen=True)
class Denial:
    """One request the policy refused during a run, as the report at exit names it.

    Its own type, not the broker's record: the broker may keep what it likes
    internally, and this stays what users read.
    """

    op: str
    """The operation refused: ``open``, ``stat``, ``connect``, ``bind``, ``secret``..."""
    target: str
    """What it was aimed at: a path, ``HOST:PORT``, a secret's name."""
    rule: str | None
    """The policy rule that decided (``files[0]``), or None when no rule covers the target."""
    message: str
    """The broker's reason, as the child was told it."""
    allow: str | None
    """The command-line flag that would allow it (``--allow-read``), or None."""
    subject: str | None = None
    """Exactly what was refused: the path, or the one path of a rename that was (None: ``target``)."""


def _denial(record: BrokerDenial) -> Denial:
    return Denial(record.op, record.target, record.rule, record.message, record.allow, record.subject)


@dataclass(frozen=True)
class RunResult:
    """How one child ended, what it printed, and what it was refused."""

    returncode: int
    """As ``privsep run`` exits: the child's status, 128+N for signal N, 124 timeout, 125..127."""
    stdout: bytes
    stderr: bytes
    how: str
    """exited, signaled, timeout, memory, seccomp, violation, setup_error, exec_error or lost.
    ``memory``: the sandbox reached its memory limit and was killed (returncode 137)."""
    detail: str = ""
    signal: int | None = None
    syscall: str | None = None
    """The syscall that got it killed, for ``how == "seccomp"``."""
    denials: tuple[Denial, ...] = ()
    syscall_denials: dict[str, int] = field(default_factory=dict)
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class _Capture:
    """One captured pipe: read by the broker's loop, kept up to a limit, drained beyond it."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.open = True

    def read(self, broker: Broker) -> None:
        try:
            data = os.read(self.fd, _CHUNK)
        except BlockingIOError:
            return
        if data:
            room = self.limit - self.size
            if len(data) > room:
                self.truncated = True
                data = data[: max(room, 0)]
            self.chunks.append(data)
            self.size += len(data)
            return
        broker.unwatch(self.fd)
        os.close(self.fd)
        self.open = False

    def value(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(eq=False)
class _Pending:
    child: Child
    out: _Capture
    err: _Capture

    @property
    def done(self) -> bool:
        return self.child.outcome is not None and not self.out.open and not self.err.open

    def result(self) -> RunResult:
        outcome = self.child.outcome
        assert outcome is not None
        return RunResult(
            returncode=outcome.returncode,
            stdout=self.out.value(),
            stderr=self.err.value(),
            how=outcome.how,
            detail=outcome.describe(),
            signal=outcome.signal,
            syscall=outcome.syscall,
            denials=tuple(_denial(d) for d in self.child.report.denials),
            syscall_denials=dict(self.child.report.syscall_denials),
            stdout_truncated=self.out.truncated,
            stderr_truncated=self.err.truncated,
        )


class Sandbox:
    """A broker and a policy; each ``run``/``call`` starts a fresh confined child under them.

    ``policy`` is a shipped name, a TOML path or a loaded ``Policy``; the
    ``allow_*``/``secrets`` grants are the command line's (``--allow-read``
    ...). ``python_path`` lists directories a ``call`` may import from:
    they join the child's view (read-only) and its ``PYTHONPATH``.
    """

    def __init__(
        self,
        policy: str | Policy = "python",
        *,
        allow_read: Sequence[str] = (),
        allow_write: Sequence[str] = (),
        allow_connect: Sequence[str] = (),
        allow_bind: Sequence[str] = (),
        secrets: Sequence[str] = (),
        python_path: Sequence[str] = (),
        timeout: float | None = None,
        output_limit: int = 1 << 20,
        audit_log: str | None = None,
        start_method: Literal["exec", "forkserver"] = "exec",
    ) -> None:
        extra = grants_to_extra(allow_read, allow_write, allow_connect, allow_bind, secrets)
        if python_path:
            paths = [os.path.abspath(p) for p in python_path]
            extra["view"] = {"read": paths}
            extra["env"] = {"set": {"PYTHONPATH": ":".join(paths)}}
        if isinstance(policy, Policy):
            if extra:
                raise PrivsepError(
                    "grants apply to a policy by name or path; merge them into a Policy yourself"
                )
            self.policy = policy
        else:
            self.policy = load_policy(policy, extra=extra or None)
        self.timeout = timeout if timeout is not None else (self.policy.limits.timeout_seconds or None)
        self.output_limit = output_limit
        self._audit_path = audit_log
        if start_method not in ("exec", "forkserver"):
            raise ValueError(f"start_method must be 'exec' or 'forkserver', not {start_method!r}")
        self.start_method = start_method
        self._parts: Assembly | None = None
        self._release = contextlib.ExitStack()
        self._waiters: dict[_Pending, asyncio.Future[RunResult]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned = False

    # -- lifetime ---------------------------------------------------------

    def __enter__(self) -> Sandbox:
        if self.policy.limits.cgroups != "off":
            # cgroup v2 may move this process into a leaf of its own cgroup (see
            # privsep.cgroups.v2): before the forkserver or the zygote exists, so it goes along.
            with contextlib.suppress(ConfinementError):
                cgroups.host()
        # On a failure assemble has released what it opened (the forkserver first of all).
        self._parts = self._release.enter_context(
            assemble(
                self.policy,
                audit_log=self._audit_path,
                forkserver=self.start_method == "forkserver",
                zygote=self.start_method == "exec",
            )
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def __aenter__(self) -> Sandbox:
        return self.__enter__()

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every child still running and release the broker, the grants, the log and the forkserver."""
        if self._loop is not None and self._parts is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._parts.broker.fileno())
            self._loop = None
        self._parts = None
        self._release.close()

    def _need_parts(self) -> Assembly:
        if self._parts is None:
            raise PrivsepError("the Sandbox is not open: use it as `with Sandbox(...) as sb:`")
        return self._parts

    def _need_broker(self) -> Broker:
        return self._need_parts().broker

    # -- run --------------------------------------------------------------

    def _start(
        self,
        argv: Sequence[str],
        stdin_data: bytes | str | None,
        timeout: float | None,
        call: CallContext | None,
    ) -> _Pending:
        parts = self._need_parts()
        broker = parts.broker
        plan = plan_for(self.policy, argv)
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(out_w, True)
        os.set_blocking(err_w, True)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        try:
            child = parts.start(
                plan,
                timeout=timeout if timeout is not None else self.timeout,
                stdio=(in_r, out_w, err_w),
                call=call,
            )
        except BaseException:
            for fd in (out_r, err_r, in_w):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        _feed(in_w, stdin_data)
        if child.cgroup_missing is not None and not self._warned:
            self._warned = True
            warnings.warn(cgroups.without(child.cgroup_missing), RuntimeWarning, stacklevel=3)
        pending = _Pending(child, _Capture(out_r, self.output_limit), _Capture(err_r, self.output_limit))
        broker.watch(out_r, lambda _fd: pending.out.read(broker))
        broker.watch(err_r, lambda _fd: pending.err.read(broker))
        return pending

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``argv`` in a fresh confined child; wait for it and return how it went."""
        pending = self._start(argv, input, timeout, None)
        broker = self._need_broker()
        while not pending.done:
            broker.run_once(max_wait=0.5)
        return pending.result()

    async def arun(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """``run`` for asyncio: many children of one Sandbox can run at once."""
        return await self._wait_async(self._start(argv, input, timeout, None))

    async def _wait_async(self, pending: _Pending) -> RunResult:
        loop = asyncio.get_running_loop()
        broker = self._need_broker()
        if self._loop is not None and self._loop.is_closed():
            self._loop = None  # an earlier asyncio.run() has ended
        if self._loop is None:
            self._loop = loop
            loop.add_reader(broker.fileno(), self._drive)
            self._tick()
        elif self._loop is not loop:
            raise PrivsepError("a Sandbox serves one asyncio event loop at a time")
        future: asyncio.Future[RunResult] = loop.create_future()
        self._waiters[pending] = future
        self._drive()
        return await future

    def _drive(self) -> None:
        if self._parts is None:
            return
        self._parts.broker.run_once(max_wait=0)
        for pending, future in list(self._waiters.items()):
            if pending.done:
                del self._waiters[pending]
                if not future.done():
                    future.set_result(pending.result())

    def _tick(self) -> None:
        """Deadlines fire from run_once even when no fd is ready: poll while anyone waits."""
        if self._loop is None:
            return
        if self._waiters:
            self._drive()
        self._loop.call_later(0.05, self._tick)

    # -- call -------------------------------------------------------------

    def call(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``package.module:function(*args, **kwargs)`` in a fresh confined Python child.

        Arguments and the result are JSON values (validated on arrival, never
        unpickled); an exception in the child raises ChildError.
        """
        pending = self._start_call(target, args, kwargs)
        broker = self._need_broker()
        while not pending.done:
            broker.run_once(max_wait=0.5)
        return _returned(pending)

    async def acall(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """``call`` for asyncio."""
        pending = self._start_call(target, args, kwargs)
        await self._wait_async(pending)
        return _returned(pending)

    def _start_call(self, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Pending:
        if not _TARGET.match(target):
            raise ValueError(f"{target!r} is not 'package.module:function'")
        try:
            json.dumps([args, kwargs], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"Sandbox.call takes JSON values only (str, int, float, bool, None, list, dict): {exc}"
            ) from None
        context = CallContext(target, list(args), dict(kwargs))
        # -P: the child's working directory is not on sys.path ahead of python_path and privsep.
        return self._start([sys.executable, "-P", "-m", "privsep._callee"], None, None, context)


def _feed(fd: int, data: bytes | str | None) -> None:
    """Write the child's stdin from a thread (a large input must not block the loop), then close."""
    if not data:
        os.close(fd)
        return
    payload = data.encode() if isinstance(data, str) else bytes(data)

    def write() -> None:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            pass  # the child stopped reading (or ended): that is its business
        finally:
            os.close(fd)

    threading.Thread(target=write, name="privsep-stdin", daemon=True).start()


def _returned(pending: _Pending) -> Any:
    call = pending.child.call
    assert call is not None
    answer = call.returned
    if answer is None:
        result = pending.result()
        tail = result.stderr[-2000:].decode(errors="replace")
        raise ChildError(
            f"no result ({result.how})", result.detail or f"exit status {result.returncode}", tail
        )
    if answer.error is not None:
        raise ChildError(answer.error.type, answer.error.message, answer.error.traceback)
    return answer.value
