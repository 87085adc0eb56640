"""One way to put a broker together: for ``privsep run``, ``privsep learn``, the doctor and ``Sandbox``.

A working broker is several resources opened in order, each of which must
be released if a later one fails. Four callers used to open them by hand,
and each got the unwinding a little differently (``Sandbox`` with an audit
log it could not open left its pinned grants open). :func:`assemble` is the
one sequence; the callers say only what differs between them::

    forkserver     Sandbox(start_method="forkserver"): first, before this process holds
                   a pinned grant, a listening socket or a log a forked child should not see
    zygote         Sandbox(start_method="exec"): first too, for the same reason; it clones
                   the sandboxes, so that the broker never forks (confine/spawn.py)
    services       the policy's pinned grants (LearningServices under learn)
    --listen       socket activation: the broker binds as client.bind would, by the policy
    audit log      created 0600
    terminal       privsep's own stdio is a tty: raw mode taken only once nothing above can
                   fail, given back only after the broker has closed (termios come back
                   whatever ends the run)
    broker         the loop; closed first, so nothing it serves outlives what it serves with

On a failure everything already opened is released, newest first, and the
error is a ``PrivsepError`` that names the step and the operating system's
reason: an ``OSError`` never escapes bare.

The module sits above ``broker/`` (it uses ``privsep.learn`` and the
forkserver, which sit on top of the broker) and below the faces. It is also
the faces' one door to the spawn plan: ``plan_for`` and ``SpawnPlan`` are
imported from here, not from where the plan is made.
"""

from __future__ import annotations

import errno
import os

from privsep._record import Record, replace
from privsep.broker.loop import Broker, CallContext, Child
from privsep.broker.pins import Pins, PinSpec
from privsep.broker.services import LazyServices, Services
from privsep.errors import PrivsepError
from privsep.plan.spawnplan import SpawnPlan, make_plan, with_listen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    T = TypeVar("T")

    # The policy's model and the protocol (pydantic) only for what uses them: a Policy
    # given, --listen; privsep run from its plan cache has neither.
    from privsep import protocol
    from privsep.broker.answers import Answer
    from privsep.broker.audit import AuditLog
    from privsep.broker.terminal import Terminal
    from privsep.confine.spawn import Zygote
    from privsep.forkserver import ForkServer
    from privsep.policy.grants import Listen
    from privsep.policy.model import Policy

__all__ = ["Assembly", "Deferred", "SpawnPlan", "assemble", "plan_for"]

_LISTEN_BACKLOG = 4096  # ``--listen``'s; a server can lower it with its own listen()


def plan_for(policy: Policy, argv: Sequence[str], *, learn: bool = False) -> SpawnPlan:
    """The plan of one sandbox running ``argv`` under ``policy``; opens nothing.

    Callers make it before :func:`assemble`, so that a policy or command the
    plan refuses is reported before anything was opened that would need undoing.
    """
    return make_plan(policy, argv, learn=learn)


class Deferred(Record):
    """A policy whose model is made when the first request needs it (``privsep run``, with a plan
    from its cache): its grants are pinned at once, from ``pins``; ``make`` makes the model."""

    __slots__ = ("make", "pins")
    pins: tuple[PinSpec, ...]
    make: Callable[[], Policy]

    def __init__(self, pins: tuple[PinSpec, ...], make: Callable[[], Policy]) -> None:
        self._assign(locals())


class Assembly:
    """The parts :func:`assemble` opened; they live until its ``with`` block ends.

    A plain class, not a dataclass: compared by identity, and a dataclass costs every
    ``privsep run`` its methods' compilation at import (see ``broker/child.py``)."""

    def __init__(
        self,
        *,
        services: Services,
        broker: Broker,
        learn: bool,
        terminal: Terminal | None,
        forkserver: ForkServer | None,
        activated: list[tuple[protocol.Bind, Answer]],
        listen_names: tuple[str, ...],
        listening: _Undo,
        zygote: Zygote | None = None,
    ) -> None:
        self.services = services
        """The policy's grants; under learn a ``LearningServices``, grown by what the command asked."""
        self.broker = broker
        self.learn = learn
        self.terminal = terminal
        self.forkserver = forkserver
        self._activated = activated
        self._listen_names = listen_names
        self._listening = listening
        """Closes the broker's copies of the listening sockets; the sandbox holds its own once started."""
        self.zygote = zygote

    def start(
        self,
        plan: SpawnPlan,
        *,
        timeout: float | None = None,
        stdio: tuple[int, int, int] = (0, 1, 2),
        call: CallContext | None = None,
    ) -> Child:
        """Start a sandbox for ``plan`` (from :func:`plan_for`) with the assembled parts.

        It gets the services, the forkserver if there is one (``call`` then
        runs in the forked process, without an exec), and the listening sockets
        and the terminal, which serve one sandbox only.
        """
        if plan.learn != self.learn:
            raise ValueError("the plan and the assembly disagree on learn: make both with the same value")
        fds = tuple(answer.fd for _request, answer in self._activated if answer.fd is not None)
        if self._listen_names:
            if not self._activated:
                raise ValueError("the --listen sockets serve one sandbox, and it has started")
            plan = with_listen(plan, self._listen_names)
        if call is not None and self.forkserver is not None:
            plan = replace(plan, in_process_call=True)
        child = self.broker.start(
            plan,
            services=self.services,
            timeout=timeout,
            stdio=stdio,
            call=call,
            spawner=self.forkserver.spawn if self.forkserver else self.zygote.spawn if self.zygote else None,
            listen_fds=fds,
            terminal=self.terminal,
        )
        if self._activated:
            self._listening.run()
            for request, answer in self._activated:
                self.broker.record(child, request, answer)
            self._activated = []
        return child


class _Undo:
    """What has been opened, to be released newest first: ``contextlib.ExitStack``'s callbacks,
    without contextlib (its import, with the collections and functools it brings, costs every
    warm ``privsep run`` more than this class does)."""

    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def push(self, step: Callable[..., object], *args: object) -> None:
        """Call ``step(*args)`` when the steps are run."""
        self._steps.append((step, args))

    def run(self) -> None:
        """Every step, newest first, each even if one before it raised; the last error raised
        (with the one before it as its context, as ExitStack chains them). Runs each step once."""
        error: BaseException | None = None
        while self._steps:
            step, args = self._steps.pop()
            try:
                step(*args)
            except BaseException as exc:
                if error is not None and exc.__context__ is None:
                    exc.__context__ = error
                error = exc
        if error is not None:
            raise error


class assemble:
    """Open a broker's parts for ``policy`` in order; release them all when the block ends or a step fails.

    ``policy``: the model, or a :class:`Deferred` one (``privsep run`` from its plan
    cache: the grants are pinned here all the same, the model is made on the first request).
    ``audit_log``: a file to append the broker's decisions to. ``learn``:
    the services grow the policy instead of denying (``privsep learn``).
    ``listen``: sockets to listen on before the command starts (``--listen``).
    ``terminal``: give the sandbox a pty of its own if privsep's stdio is a
    terminal (``privsep run``). ``forkserver``: start children from a
    forkserver (``Sandbox(start_method="forkserver")``). ``zygote``: from a
    zygote (``Sandbox``'s other start method): for a broker that starts many.
    """

    def __init__(
        self,
        policy: Policy | Deferred,
        *,
        audit_log: str | None = None,
        learn: bool = False,
        listen: Sequence[Listen] = (),
        terminal: bool = False,
        forkserver: bool = False,
        zygote: bool = False,
    ) -> None:
        self._policy = policy
        self._audit_log = audit_log
        self._learn = learn
        self._listen = listen
        self._terminal = terminal
        self._forkserver = forkserver
        self._zygote = zygote
        self._undo = _Undo()

    def __enter__(self) -> Assembly:
        try:
            return self._open()
        except BaseException:
            self._undo.run()
            raise

    def __exit__(self, *_exc: object) -> None:
        self._undo.run()

    def _open(self) -> Assembly:
        undo = self._undo
        server = None
        if self._forkserver:
            from privsep.forkserver import ForkServer  # noqa: PLC0415 - only a Sandbox that asks pays for it

            server = _named("cannot start the forkserver", ForkServer)
            undo.push(server.close)
        cloner = None
        if self._zygote and not self._forkserver:
            from privsep.confine.spawn import Zygote  # noqa: PLC0415 - only a Sandbox pays for it

            cloner = _named("cannot start the zygote", Zygote)
            undo.push(cloner.close)
        services = _named("cannot open the policy's grants", lambda: _services(self._policy, self._learn))
        undo.push(services.close)  # the grants current at exit (the learned ones, under learn)
        activated = _activate(self._listen, services)
        listening = _Undo()
        undo.push(listening.run)
        for _request, answer in activated:
            if answer.fd is not None:
                listening.push(os.close, answer.fd)
        audit = None
        if self._audit_log:
            # No sandbox of this process may write where the log is (plan/ownpaths.py): a Sandbox
            # plans after this; privsep run, which planned before, checks its plan itself.
            from privsep.plan.ownpaths import guard  # noqa: PLC0415 - only with an audit log

            guard(self._audit_log, "the audit log", "give the audit log a path outside every write grant")
            audit = _open_audit_log(self._audit_log)
            undo.push(audit.close)
        tty = None
        if self._terminal:
            tty = _named("cannot give the sandbox a terminal of its own", _terminal)
            if tty is not None:
                undo.push(tty.close)
        broker = _named("cannot start the broker", lambda: Broker(audit=audit))
        undo.push(broker.close)
        return Assembly(
            services=services,
            broker=broker,
            learn=self._learn,
            terminal=tty,
            forkserver=server,
            activated=activated,
            listen_names=tuple(one.name for one in self._listen),
            listening=listening,
            zygote=cloner,
        )


def _named(what: str, make: Callable[[], T]) -> T:
    """``make()``; an OSError from it becomes a PrivsepError saying which step failed and why."""
    try:
        return make()
    except OSError as exc:
        raise PrivsepError(f"{what}: {exc.strerror or exc}") from exc


def _services(policy: Policy | Deferred, learn: bool) -> Services:
    if isinstance(policy, Deferred):
        if learn:
            raise ValueError("privsep learn grows its policy's model: give the model, not a Deferred")
        return LazyServices(Pins(policy.pins), policy.make)
    if not learn:
        return Services(policy)
    from privsep.learn import LearningServices  # noqa: PLC0415 - privsep learn's alone

    return LearningServices(policy)


def _activate(listens: Sequence[Listen], services: Services) -> list[tuple[protocol.Bind, Answer]]:
    """``--listen``: the broker binds and listens on each address, as ``client.bind`` would."""
    activated: list[tuple[protocol.Bind, Answer]] = []
    if not listens:
        return activated
    from privsep import protocol  # noqa: PLC0415 - see TYPE_CHECKING above
    from privsep.broker.answers import Refusal  # noqa: PLC0415 - as protocol

    try:
        for listen in listens:
            request = protocol.Bind(
                id=0, host=listen.host, port=listen.port, type="tcp", backlog=_LISTEN_BACKLOG
            )
            try:
                activated.append((request, services.handle(request)))
            except Refusal as refusal:
                raise PrivsepError(f"--listen {listen.bind_grant()}: {refusal.message}") from None
    except BaseException:
        for _request, answer in activated:
            if answer.fd is not None:
                os.close(answer.fd)
        raise
    return activated


def _open_audit_log(path: str) -> AuditLog:
    from privsep.broker.audit import AuditLog  # noqa: PLC0415 - only with --audit-log

    try:
        return AuditLog(path)
    except OSError as exc:
        fix = (
            f"; create {os.path.dirname(path) or '.'} first, or give another path"
            if exc.errno == errno.ENOENT
            else ""
        )
        raise PrivsepError(f"cannot open the audit log {path}: {exc.strerror or exc}{fix}") from None


def _terminal() -> Terminal | None:
    """The sandbox's own pty, entered (raw mode taken), when privsep's stdio is a terminal
    (broker/terminal.py), else None."""
    if not any(os.isatty(fd) for fd in (0, 1, 2)):
        return None  # not even the module's import to pay
    from privsep.broker.terminal import Terminal  # noqa: PLC0415 - only with a terminal

    found = Terminal.for_stdio((0, 1, 2))
    return None if found is None else found.__enter__()
