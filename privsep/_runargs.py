"""The options of ``privsep run``, in one table: argparse's parser and the quick parse both read it.

Importing argparse (with the gettext and locale it imports), building the
parser of every subcommand and looking up its translations cost a warm
``privsep run -- /bin/true`` about 4 ms of its ~60, for arguments that are
nearly always exact: ``--allow-read PATH``, ``--policy=web``, ``--``, a
command. :func:`quick_run` parses exactly those, as argparse would, and
answers None for anything else (help, an abbreviated or unknown option, a
value that starts with a dash, a value argparse would refuse); argparse then
parses, and explains, as it always did. ``_argparser.py`` builds the ``run``
subparser from :data:`RUN_OPTIONS`, so the two cannot disagree on what an
option is; ``tests/unit/test_runargs.py`` checks that they give the same
namespace for every argument list the quick parse accepts.
"""

from __future__ import annotations

from types import SimpleNamespace

from privsep.errors import EXIT_TIMEOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["RUN_OPTIONS", "RunOption", "quick_run"]


class RunOption:
    """One option of ``privsep run``: what argparse's ``add_argument`` is given for it.

    ``action``: "store" (the last one given counts), "append" (each adds to a list) or
    "store_true". ``group``: the help section it is listed in (None: the command's own).
    """

    __slots__ = ("action", "convert", "default", "dest", "flag", "group", "help", "metavar")

    def __init__(
        self,
        flag: str,
        help: str,
        *,
        action: str = "store",
        convert: Callable[[str], object] | None = None,
        default: object = None,
        metavar: str | None = None,
        group: str | None = None,
    ) -> None:
        self.flag = flag
        self.help = help
        self.action = action
        self.convert = convert
        self.default = [] if action == "append" else False if action == "store_true" else default
        self.metavar = metavar
        self.group = group
        self.dest = flag.removeprefix("--").replace("-", "_")


#: The help sections of the groups, in the order argparse lists them.
GRANTS = (
    "grants for this run (repeatable; merged over the policy; file grants are bound into the "
    "child's view and enforced by the kernel, network grants are performed by the broker)"
)
LIMITS = "limits for this run (over the policy's [limits]; the sandbox's cgroup holds it to them as a whole)"

#: Every option of ``privsep run``, in the order ``privsep run --help`` lists them in each section.
RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption(
        "--policy",
        "a shipped policy name or a TOML file (default: minimal)",
        default="minimal",
        metavar="NAME|FILE",
    ),
    RunOption(
        "--timeout",
        f"kill the sandbox after this many seconds (exit {EXIT_TIMEOUT})",
        convert=float,
        metavar="SECONDS",
    ),
    RunOption(
        "--allow-read",
        "read and list PATH (bound read-only at the same path)",
        action="append",
        metavar="PATH",
        group=GRANTS,
    ),
    RunOption(
        "--allow-write",
        "read, write, create, rename and remove under PATH (bound read-write)",
        action="append",
        metavar="PATH",
        group=GRANTS,
    ),
    RunOption(
        "--allow-connect",
        "connect to HOST:PORT (tcp; HOST:PORT/udp for udp, relayed)",
        action="append",
        metavar="HOST:PORT",
        group=GRANTS,
    ),
    RunOption(
        "--allow-bind",
        "bind HOST:PORT (tcp; HOST:PORT/udp for udp, relayed): through privsep.client.bind, or the "
        "program's own socket()/bind()/listen(), which the broker serves with a socket of its own "
        "in the host's network (ports below 1024 need a root broker)",
        action="append",
        metavar="HOST:PORT",
        group=GRANTS,
    ),
    RunOption(
        "--listen",
        "socket activation, as systemd does it: the broker listens on HOST:PORT (default host "
        "0.0.0.0; [::]:PORT for IPv6) before the command starts and passes the socket as fd 3, 4... "
        "with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES (NAME, default 'listen'); PRIVSEP_FD then "
        "names the fd after them. Implies --allow-bind HOST:PORT",
        action="append",
        metavar="[NAME=][HOST:]PORT[/tcp]",
        group=GRANTS,
    ),
    RunOption(
        "--proxy",
        "an HTTP proxy (127.0.0.1:3128) and a SOCKS5 proxy (127.0.0.1:1080) in the sandbox, served by "
        "the broker, and HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY set: they allow what "
        "--allow-connect allows, deciding on the host name asked ([network] proxy = true)",
        action="store_true",
        group=GRANTS,
    ),
    RunOption(
        "--secret",
        "a secret the child may ask for by NAME (as a sealed read-only memfd)",
        action="append",
        metavar="NAME=env:VAR|file:PATH",
        group=GRANTS,
    ),
    RunOption(
        "--memory-mb",
        "memory of the whole sandbox, memfds, shm and /tmp included, no swap; past it the sandbox "
        "is killed (exit 137)",
        convert=int,
        metavar="MB",
        group=LIMITS,
    ),
    RunOption(
        "--processes",
        "processes and threads of the whole sandbox at once",
        convert=int,
        metavar="N",
        group=LIMITS,
    ),
    RunOption(
        "--cpu-percent",
        "CPU time per wall-clock time, in %% of one CPU (200: two)",
        convert=int,
        metavar="P",
        group=LIMITS,
    ),
    RunOption(
        "--no-cgroups",
        "run without the sandbox's cgroup (per-process setrlimit only; said on stderr at the start)",
        action="store_true",
        group=LIMITS,
    ),
    RunOption(
        "--audit-log",
        "append one JSON line per broker decision to FILE (created 0600)",
        metavar="FILE",
    ),
    RunOption(
        "--no-cache",
        "plan this run from the policy anew and keep nothing (also: PRIVSEP_NO_CACHE=1); by "
        "default a plan is kept and used again while every file and host fact it was made from holds",
        action="store_true",
    ),
)

_BY_FLAG = {option.flag: option for option in RUN_OPTIONS}


def quick_run(argv: Sequence[str]) -> SimpleNamespace | None:
    """``argv`` (without the program name) parsed as argparse parses ``privsep run ...``, when
    it is ``run``, exact long options and a command; None for anything else (argparse's then).

    Everything from the first argument that is not an option (``--`` included) is the
    command, as argparse's ``REMAINDER`` takes it.
    """
    if not argv or argv[0] != "run":
        return None
    values: dict[str, object] = {"cmd": "run"}
    for option in RUN_OPTIONS:
        values[option.dest] = [] if option.action == "append" else option.default
    at = 1
    while at < len(argv) and argv[at].startswith("-") and argv[at] != "--":
        taken = _option(argv, at)
        if taken is None:
            return None
        option, value, at = taken
        if option.action == "append":
            appended = values[option.dest]
            assert isinstance(appended, list)
            appended.append(value)
        else:
            values[option.dest] = value
    values["command"] = list(argv[at:])
    return SimpleNamespace(**values)


def _option(argv: Sequence[str], at: int) -> tuple[RunOption, object, int] | None:
    """The option at ``argv[at]``, its value (converted) and where the next argument is; None
    where argparse would do something else with it (decide, refuse, explain)."""
    name, equals, value = argv[at].partition("=")
    option = _BY_FLAG.get(name)
    if option is None:
        return None  # -h, an abbreviation, a short or unknown option
    at += 1
    if option.action == "store_true":
        return None if equals else (option, True, at)  # argparse refuses a value there
    if not equals:
        if at == len(argv) or argv[at].startswith("-"):
            return None  # missing, or a dash: argparse decides whether it is a value
        value = argv[at]
        at += 1
    elif value == "--":
        return None  # argparse drops a "--" even from "--opt=--" (and stores what is left)
    try:
        return option, value if option.convert is None else option.convert(value), at
    except ValueError:
        return None  # argparse says what is wrong with it
