"""The ``privsep`` command: a thin face over policy, confine and broker.

Imports are lazy so that ``privsep run`` pays only for what it uses.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from privsep.errors import PrivsepError

EXIT_USAGE = 125


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 125 like every other privsep error (2 could be the command's own)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"privsep: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="privsep",
        description="Run a program confined, with a privileged broker doing what it may not.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a command in a sandbox",
        description=(
            "Run COMMAND as an unprivileged, seccomp-filtered child whose only link out is a socketpair to "
            "this process. Exit status: the command's own; 128+N if it died of signal N; 124 on timeout; "
            "125 for privsep's own error; 126 not executable; 127 not found."
        ),
    )
    run.add_argument(
        "--policy",
        default="minimal",
        metavar="NAME|FILE",
        help="a shipped policy name or a TOML file (default: minimal)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill the sandbox after this many seconds (exit 124)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    return parser


def _run(args: argparse.Namespace) -> int:
    from privsep.broker.loop import Broker
    from privsep.confine.spawn import make_plan
    from privsep.policy.load import load_policy

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise PrivsepError("no command given; usage: privsep run [--policy NAME|FILE] -- COMMAND [ARG...]")
    policy = load_policy(args.policy)
    timeout = args.timeout if args.timeout is not None else (policy.limits.timeout_seconds or None)
    if timeout is not None and timeout <= 0:
        raise PrivsepError("--timeout must be a positive number of seconds")
    plan = make_plan(policy, command)
    broker = Broker()
    child = broker.start(plan, timeout=timeout)
    interrupts = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        # The command is in its own session, so terminal signals do not reach it:
        # pass them on. A second interrupt means "stop now".
        nonlocal interrupts
        interrupts += signum == signal.SIGINT
        if interrupts > 1:
            from privsep.broker.outcome import Outcome

            broker.kill(
                child,
                Outcome(
                    "signaled",
                    128 + signal.SIGINT,
                    detail="interrupted twice; the sandbox was killed",
                    signal=signal.SIGINT,
                ),
            )
        else:
            broker.send_signal(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    try:
        outcome = broker.wait(child)
    finally:
        broker.close()
    message = outcome.describe()
    if message:
        print(f"privsep: {message}", file=sys.stderr)
    return outcome.returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "run":
            return _run(args)
    except PrivsepError as exc:
        print(f"privsep: error: {exc}", file=sys.stderr)
        return exc.exit_status
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
