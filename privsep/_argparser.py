"""The argparse parser of the ``privsep`` command: every subcommand, its help and its errors.

Imported only when ``_runargs.quick_run`` cannot parse the arguments (help, a
subcommand other than ``run``, an argument argparse has to explain): its
import and its parser are ~4 ms of a run. ``run``'s options come from
``_runargs.RUN_OPTIONS``, which the quick parse reads too.
"""

from __future__ import annotations

import argparse
import gettext
import os
import sys

from privsep._runargs import RUN_OPTIONS
from privsep.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_PRIVSEP, EXIT_TIMEOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["parse", "parser"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    """``argv`` (default: ``sys.argv[1:]``) as the ``privsep`` command's arguments; usage
    errors print argparse's message and exit EXIT_PRIVSEP."""
    _translate_once()
    return parser().parse_args(argv)


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the terminal's width: asked for it, argparse imports shutil, for
    every parser and on every run, though a run never prints help."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )


def _columns() -> int:
    """``shutil.get_terminal_size().columns`` (COLUMNS, else stdout's terminal, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _translate_once() -> None:
    """argparse looks up each of its words with gettext, which searches the disk for a catalog at
    every lookup (a dozen stat calls per word with LANG set) and remembers finding none: about
    5 ms of every run. Look the catalog up once; argparse translates exactly as before."""
    domain = gettext.textdomain()
    found = gettext.translation(domain, gettext.bindtextdomain(domain), fallback=True)
    setattr(argparse, "_", found.gettext)  # noqa: B010 - argparse binds them as module globals
    setattr(argparse, "ngettext", found.ngettext)  # noqa: B010


class _Parser(argparse.ArgumentParser):
    """Usage errors exit EXIT_PRIVSEP like every other privsep error (2 could be the command's own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)  # subcommands' parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_PRIVSEP, f"privsep: error: {message}\n")


def parser() -> argparse.ArgumentParser:
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
            "this process. Exit status: the command's own; 128+N if it died of signal N; "
            f"{EXIT_TIMEOUT} on timeout; {EXIT_PRIVSEP} for privsep's own error; "
            f"{EXIT_NOT_EXECUTABLE} not executable; {EXIT_NOT_FOUND} not found."
        ),
    )
    groups: dict[str | None, argparse._ActionsContainer] = {None: run}
    for option in RUN_OPTIONS:
        if option.group not in groups:
            groups[option.group] = run.add_argument_group(option.group)
        kwargs: dict[str, Any] = {"action": option.action, "help": option.help}
        if option.action != "store_true":
            kwargs.update(default=option.default, metavar=option.metavar)
            if option.convert is not None:
                kwargs["type"] = option.convert
        groups[option.group].add_argument(option.flag, **kwargs)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    learn = sub.add_parser(
        "learn",
        help="run a command permissively and write the smallest policy that lets it run",
        description=(
            "Run COMMAND confined as with `privsep run`, but let what the base policy denies happen, "
            "and record it: syscalls outside the allowlist (the dangerous set stays denied) and "
            "brokered file and network requests. Then write a policy that extends the base with "
            "exactly that. The command must ask the broker for its files (privsep.client)."
        ),
    )
    learn.add_argument("--policy", default="minimal", metavar="BASE", help="the policy to start from")
    learn.add_argument("-o", "--output", required=True, metavar="NEW.toml", help="where to write the policy")
    learn.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="as for run")
    learn.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    policy_sub.add_parser("schema", help="print the JSON Schema of a policy file")
    show = policy_sub.add_parser(
        "show",
        help="print a policy fully resolved: extends merged, variables and syscall groups expanded",
        description=(
            "Print the policy `privsep run --policy NAME|FILE` enforces, as a commented TOML policy file "
            "(or JSON). Exit status 1 when privsep run would refuse it here (the problems go to stderr)."
        ),
    )
    show.add_argument("policy", metavar="NAME|FILE", help="a shipped policy name or a TOML file")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check = policy_sub.add_parser(
        "check",
        help="check policies: every error with its file and field",
        description=(
            "Load each policy, resolve its syscall names, compile its seccomp filter, plan its view and "
            "pin its file grants on this machine, as privsep run would. Prints 'NAME: ok' or every "
            "error with its file and field. Exit status 0 if every policy is ok, else 1."
        ),
    )
    check.add_argument("policies", nargs="+", metavar="NAME|FILE", help="shipped policy names or TOML files")
    doctor = sub.add_parser(
        "doctor",
        help="what this kernel supports, and which layers privsep run applies here",
        description=(
            "Probe Landlock, seccomp, namespaces, cgroups, openat2 and pidfds, run a trial sandbox, and say "
            "which layers privsep run applies here. Exit status 0 when every layer it needs is available, "
            "else 1 (privsep run would refuse to start)."
        ),
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser
