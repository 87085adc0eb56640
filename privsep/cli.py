"""The ``privsep`` command: a thin face over policy, confine and broker.

Imports are lazy so that ``privsep run`` pays only for what it uses, and a
run like the last one plans nothing: it reads the plan that one kept
(``privsep.plan.cache``) and makes the policy's model only if the sandbox asks.
"""

from __future__ import annotations

import gc
import os
import sys
from types import SimpleNamespace

from privsep import _jsontext, _signals
from privsep._printable import printable
from privsep._runargs import quick_run
from privsep.errors import EXIT_PRIVSEP, PrivsepError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import FrameType
    from typing import NoReturn

    from privsep._assemble import SpawnPlan
    from privsep.broker.loop import Broker, Child
    from privsep.broker.report import Denial
    from privsep.plan.cache import Prepared
    from privsep.policy.grants import Listen
    from privsep.policy.load import Resolved
    from privsep.policy.model import Policy

    #: The command's arguments: argparse's, or the quick parse's of a plain ``privsep run``.
    Args = argparse.Namespace | SimpleNamespace


def _limits_extra(args: Args) -> dict[str, object]:
    limits: dict[str, object] = {}
    for key in ("memory_mb", "processes", "cpu_percent"):
        if getattr(args, key) is not None:
            limits[key] = getattr(args, key)
    if args.no_cgroups:
        limits["cgroups"] = "off"
    return limits


def _run(args: Args, collecting: bool) -> int:
    from privsep._assemble import Deferred, assemble

    command = _command(args)
    if args.audit_log:
        from privsep.plan.ownpaths import guard

        guard(args.audit_log, "the audit log", "give --audit-log a path outside every write grant")
    prepared, model = _prepare(args, command)
    # Planning checked these (plan/ownpaths.py, plan/importpath.py); a plan from the cache was
    # made by a run that may have had no audit log, or another one, and another environment:
    # another PYTHONPYCACHEPREFIX, LD_LIBRARY_PATH or cache directory, which its key does not
    # hold (audit 13: a kept plan's grant of a bytecode prefix set since ran the sandbox's .pyc).
    written = [(b.path, ("write",)) for b in prepared.plan.view.binds if b.writable]
    written += [(path, ("write",)) for _, path, writes in prepared.pins if writes]
    cached = model is None and bool(written)
    if cached:
        from privsep.plan.importpath import check_grants

        check_grants(written)
    if written:  # nothing to check otherwise: the paths' checks cost their modules' import
        from privsep.plan.ownpaths import check_writes
        from privsep.plan.spawnplan import own_cache

        check_writes(written, own_cache() if cached else ())
    timeout = _timeout(args, prepared.timeout)
    listens: list[Listen] = []
    if args.listen:
        from privsep.policy.grants import parse_listen

        listens = parse_listen(args.listen)
    # From the cache there is no model: it is made if and when a request needs it.
    policy = model if model is not None else Deferred(prepared.pins, lambda: _policy_of(prepared.policy))
    plan = prepared.plan
    with (
        _stoppable_start(),
        assemble(policy, audit_log=args.audit_log, listen=listens, terminal=True) as parts,
    ):
        child = parts.start(plan, timeout=timeout)
        if collecting:
            # Off since main(): the set-up is behind us, and the broker may serve for hours. What
            # the set-up made (the modules, the plan, the broker: about 17,000 objects, of which a
            # few hundred are garbage) is frozen out of the collector's reach first, or its first
            # pass would walk them all while the sandbox starts (~1 ms per run).
            gc.freeze()
            gc.enable()
        if child.cgroup_missing is not None:
            from privsep.cgroups import without

            print(f"privsep: warning: {without(child.cgroup_missing)}", file=sys.stderr, flush=True)
        status = _serve(parts.broker, child)
        if status != 0:
            outcome = child.outcome
            explained = bool(child.report.denials) or (outcome is not None and outcome.how != "exited")
            _report_hidden_paths(command, plan, explained=explained)
        return status
    raise AssertionError("unreachable")  # pragma: no cover - mypy: a context manager may swallow


def _prepare(args: Args, command: list[str]) -> tuple[Prepared, Policy | None]:
    """What the run computes from its policy: from the plan cache (and no model) when a plan
    kept there still holds, else made now (with the model), and kept for the next run."""
    from privsep.plan import cache

    key = None
    if not args.no_cache:
        inputs = [
            args.policy,
            args.allow_read,
            args.allow_write,
            args.allow_connect,
            args.allow_bind,
            args.listen,
            args.secret,
            _limits_extra(args),
            args.proxy,
        ]
        key = cache.key(inputs)
    if key is not None:
        kept = cache.load(key)
        if kept is not None:
            return kept.for_command(command), None
    from privsep import _hostfacts
    from privsep.broker.pins import pin_specs
    from privsep.plan.spawnplan import make_plan
    from privsep.policy.grants import grants_to_extra, parse_listen
    from privsep.policy.load import resolve_policy, validate_policy

    binds = [*args.allow_bind, *(listen.bind_grant() for listen in parse_listen(args.listen))]
    extra = grants_to_extra(args.allow_read, args.allow_write, args.allow_connect, binds, args.secret)
    limits = _limits_extra(args)
    if limits:
        extra["limits"] = limits
    if args.proxy:
        extra["network"] = {"proxy": True}
    with _hostfacts.recording() as seen:
        resolved = resolve_policy(args.policy, extra=extra)
        policy = validate_policy(resolved)
        _timeout(args, policy.limits.timeout_seconds or None)  # refused before planning, as ever
        plan = make_plan(policy, command)
        cache.note_libraries()
    kept_as = _kept_as(resolved)
    prepared = cache.Prepared(
        plan=plan,
        pins=pin_specs(policy),
        timeout=policy.limits.timeout_seconds or None,
        policy=kept_as or "",
    )
    if key is not None and seen.complete and kept_as is not None:
        cache.store(key, seen.facts, prepared)
    return prepared, policy


def _kept_as(resolved: Resolved) -> str | None:
    """``resolved`` as the plan cache keeps it (JSON), or None when JSON cannot hold it exactly
    (a TOML date, a NaN): such a policy is planned anew on every run."""
    import json

    data = [resolved.spec, resolved.origin, resolved.extra, resolved.data]
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == data else None


def _policy_of(resolved: str) -> Policy:
    """The model of a policy the plan cache kept as its resolved input (see ``Deferred``)."""
    from privsep.policy.load import Resolved, validate_policy

    spec, origin, extra, data = _jsontext.loads(resolved)
    return validate_policy(Resolved(spec, origin, extra, data))


def _report_hidden_paths(command: Sequence[str], plan: SpawnPlan, *, explained: bool) -> None:
    """After a failure: command-line paths the child could not see or write (see hints.py)."""
    from privsep.hints import outside_view_hints

    try:
        cwd = os.getcwd()
    except OSError:
        return
    for line in outside_view_hints(command, cwd, plan.cwd, plan.view, explained=explained):
        print(f"privsep: {printable(line)}", file=sys.stderr)


def _command(args: Args) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise PrivsepError(f"no command given; usage: privsep {args.cmd} [OPTIONS] -- COMMAND [ARG...]")
    return command


def _timeout(args: Args, default: float | None) -> float | None:
    """``--timeout``, else the policy's (``default``); a PrivsepError if it is not positive."""
    timeout: float | None = args.timeout if args.timeout is not None else default
    if timeout is not None and timeout <= 0:
        raise PrivsepError("--timeout must be a positive number of seconds")
    return timeout


def _learn(args: Args) -> int:
    from privsep._assemble import assemble, plan_for
    from privsep.learn import LearningServices, render
    from privsep.policy.load import load_policy

    command = _command(args)
    base = load_policy(args.policy)
    plan = plan_for(base, command, learn=True)
    with _stoppable_start(), assemble(base, learn=True, terminal=True) as parts:
        services = parts.services
        assert isinstance(services, LearningServices)  # what learn=True assembles
        child = parts.start(plan, timeout=_timeout(args, base.limits.timeout_seconds or None))
        status = _serve(parts.broker, child)
        # A file base is named absolutely: the new policy may live elsewhere.
        shipped = "/" not in args.policy and not args.policy.endswith(".toml")
        spec = args.policy if shipped else os.path.abspath(args.policy)
        text = render(spec, base, services.policy, child.report.syscalls_used, services.secrets_asked)
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise PrivsepError(f"cannot write {args.output}: {exc.strerror}") from None
    new, old = services.policy, base
    counts = (
        f"{len(child.report.syscalls_used)} syscalls, {len(new.files) - len(old.files)} file rules, "
        f"{len(new.connect) - len(old.connect)} connect rules, {len(new.bind) - len(old.bind)} bind rules"
    )
    print(f"privsep: wrote {args.output}: {counts} beyond {args.policy!r}", file=sys.stderr)
    print(f"privsep: the command exited with status {status}", file=sys.stderr)
    return status


#: The signals privsep passes on to the command (``_serve``).
_PASSED_ON = (_signals.SIGINT, _signals.SIGTERM, _signals.SIGHUP, _signals.SIGQUIT)


class _Stopped(BaseException):
    """One of the signals privsep passes on came while the sandbox started (``_stoppable_start``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _stoppable_start:
    """Until ``_serve`` passes them on to the command, the signals privsep passes on stop the
    start: each raises :class:`_Stopped`, which unwinds it (the sandbox, if there is one yet,
    killed; the terminal given back) and privsep exits 128+N, as the signal's default would.

    Entered before ``assemble`` takes the terminal's raw mode: a SIGTERM, SIGHUP or SIGQUIT
    in between ended privsep by its default action and left the terminal raw; SIGINT's
    KeyboardInterrupt printed a traceback. Not held for later: a start that blocks (an
    ``--audit-log`` on a FIFO nobody reads) must still stop (fresh-eyes audit 12). Whatever
    the start was doing when the exception came unwinds as it does for any error (the clone
    itself runs with every signal blocked: ``confine/spawn.py``). The handlers before are
    back when the block ends. (A class, not ``contextlib.contextmanager``: see ``_signals``.)
    """

    def __enter__(self) -> None:
        self._previous = {sig: _signals.signal(sig, self._stop) for sig in _PASSED_ON}

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            _signals.signal(sig, handler)

    @staticmethod
    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stopped(signum)


def _serve(broker: Broker, child: Child) -> int:
    interrupts = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        # The command is not in privsep's session: what is sent to privsep (or typed
        # into a terminal privsep does not relay) does not reach it: pass it on. A
        # second interrupt means "stop now". (Typed into a terminal privsep relays,
        # ^C is a byte on the child's own pty: its line discipline signals the job.)
        nonlocal interrupts
        interrupts += signum == _signals.SIGINT
        if interrupts > 1:
            from privsep.broker.outcome import Outcome

            broker.kill(
                child,
                Outcome(
                    "signaled",
                    128 + _signals.SIGINT,
                    detail="interrupted twice; the sandbox was killed",
                    signal=_signals.SIGINT,
                ),
            )
        else:
            broker.send_signal(child, signum)

    for sig in _PASSED_ON:
        _signals.signal(sig, forward)
    outcome = broker.wait(child)
    _report_syscalls(child.report.syscall_denials, child.syscalls.default)
    report = child.report
    _report_denials(report.denials)
    if report.denials_dropped:
        print(f"privsep: ... and {report.denials_dropped} more denials (see --audit-log)", file=sys.stderr)
    message = outcome.describe()
    if message:
        print(f"privsep: {message}", file=sys.stderr)
    return outcome.returncode


_MAX_REPORTED = 20


def _report_syscalls(denied: dict[str, int], default: str) -> None:
    """Once per syscall: its name, how many times, and the policy line that would allow it."""
    if not denied:
        return
    from privsep.policy.syscalls import DANGEROUS, GROUPS

    answer = "ENOSYS" if default == "enosys" else "EPERM"
    for name, count in sorted(denied.items()):
        times = "once" if count == 1 else f"{count} times"
        if name in DANGEROUS or not name.isidentifier():
            print(f"privsep: syscall {name} was denied {times}; privsep never allows it", file=sys.stderr)
            continue
        groups = sorted(g for g, members in GROUPS.items() if name in members)
        also = f" (or a group holding it: {', '.join(groups)})" if groups else ""
        print(
            f'privsep: syscall {name} was denied {times} ({answer}); to allow it, add "{name}" to '
            f"[syscalls] allow in the policy{also}",
            file=sys.stderr,
        )


def _report_denials(denials: Sequence[Denial]) -> None:
    """Once per distinct denial: what, which rule decided, and how to allow it."""
    seen: dict[tuple[str, str, str], int] = {}
    for d in denials:
        key = (d.op, d.target, d.message)
        seen[key] = seen.get(key, 0) + 1
    # One hint per distinct flag and value (every denied path needs its own --allow-read).
    hints: dict[tuple[str, str], None] = {}
    for d in denials:
        if d.allow is not None:
            value = (d.subject or d.target).removesuffix("/tcp")
            hints[(d.allow, value + "=env:VAR" if d.allow == "--secret" else value)] = None
    for (op, what, message), count in list(seen.items())[:_MAX_REPORTED]:
        times = f" ({count} times)" if count > 1 else ""
        print(f"privsep: denied {op} {printable(what)}{times}: {message}", file=sys.stderr)
    if len(seen) > _MAX_REPORTED:
        print(f"privsep: ... and {len(seen) - _MAX_REPORTED} more denials (see --audit-log)", file=sys.stderr)
    for flag, value in list(hints)[:_MAX_REPORTED]:
        print(f"privsep: to allow it, re-run with {flag}={printable(value)}", file=sys.stderr)


def _tooling(args: Args) -> int:
    """``policy schema/show/check`` and ``doctor``: each a function of its own module."""
    if args.cmd == "doctor":
        from privsep.doctor import doctor_command

        return doctor_command(as_json=args.json)
    if args.policy_cmd == "schema":
        import json

        from privsep import _stdout
        from privsep.policy.schema import policy_json_schema

        _stdout.write(json.dumps(policy_json_schema(), indent=2) + "\n")
        return 0
    if args.policy_cmd == "show":
        from privsep.check import show_command

        return show_command(args.policy, as_json=args.json)
    from privsep.check import check_command

    return check_command(args.policies)


def main(argv: Sequence[str] | None = None) -> int:
    _open_standard_fds()
    # No cyclic garbage collection while a run sets up: its imports, plan and broker make
    # tens of thousands of objects that live as long as the run, and the collector walked
    # them again and again, about 7% of a warm `privsep run -- /bin/true`'s CPU time. What
    # the set-up leaves in cycles is collected once it is on again (_run, after the start).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _main(argv, collecting)
    finally:
        if collecting:
            gc.enable()


def _open_standard_fds() -> None:
    """Put ``/dev/null`` on whichever of fds 0, 1 and 2 privsep was started without.

    Started with one closed (``privsep run ... <&-``), the next fd the broker opened took its
    number (a pinned grant's directory, the audit log, the loop's epoll) and was handed to the
    sandbox as its stdin, stdout or stderr: a directory fd outside every mask of the view, an
    audit log the command could write, an epoll it could fill with fds of its own (fresh-eyes
    audit of the clone-init change; older than it). The command now finds ``/dev/null`` there,
    as a program that OpenSSH starts does. Before anything else opens an fd.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd`` itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)


def _main(argv: Sequence[str] | None, collecting: bool) -> int:
    args: Args | None = quick_run(sys.argv[1:] if argv is None else argv)
    if args is None:
        from privsep import _argparser

        args = _argparser.parse(None if argv is None else list(argv))
    if args.cmd != "run" and collecting:
        gc.enable()  # only a run's start is worth it
    try:
        if args.cmd == "run":
            return _run(args, collecting)
        if args.cmd == "learn":
            return _learn(args)
        if args.cmd in {"doctor", "policy"}:
            return _tooling(args)
    except PrivsepError as exc:
        print(f"privsep: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except _Stopped as stop:
        name = _signals.name(stop.signum)
        print(f"privsep: stopped by {name} while the sandbox started", file=sys.stderr)
        return 128 + stop.signum
    return EXIT_PRIVSEP  # pragma: no cover - argparse rejects unknown commands


def entry() -> NoReturn:
    """The ``privsep`` command (pyproject.toml's console script): :func:`main`, then the process ends
    without tearing the interpreter down.

    By the time ``main`` returns, everything privsep opened is closed (the sandbox reaped, its
    cgroup removed, the terminal given back, the audit log closed) and its threads are daemons:
    what is left is the interpreter freeing every module and object one by one, about a tenth of
    a warm ``privsep run -- /bin/true``'s CPU time. The output is flushed first; should that
    fail, the interpreter exits as it always did and reports it as it always did.
    """
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(status)
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    entry()
