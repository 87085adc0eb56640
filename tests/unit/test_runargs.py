"""``privsep run``'s quick parse: the namespace argparse gives, or none at all.

A warm ``privsep run`` parses its arguments without argparse (``privsep/_runargs.py``);
argparse parses whatever the quick parse declines. These tests hold the two together:
the same options, and the same namespace for every argument list the quick parse takes.
"""

from __future__ import annotations

import argparse
import random

import pytest

from privsep import _argparser
from privsep._runargs import RUN_OPTIONS, quick_run


def _run_parser() -> argparse.ArgumentParser:
    parser = _argparser.parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    assert isinstance(run, argparse.ArgumentParser)
    return run


def test_the_table_is_every_option_argparse_knows() -> None:
    actions = {
        a.option_strings[0]: a for a in _run_parser()._actions if a.option_strings and a.dest != "help"
    }
    assert list(actions) == [o.flag for o in RUN_OPTIONS]
    for option in RUN_OPTIONS:
        action = actions[option.flag]
        assert action.option_strings == [option.flag]
        assert action.dest == option.dest
        assert action.default == option.default
        assert action.type is option.convert


def _argparse(argv: list[str]) -> dict[str, object] | None:
    try:
        return vars(_argparser.parser().parse_args(argv))
    except SystemExit:
        return None


_VALUES = [
    "/tmp",
    "a=b",
    "web",
    "1.5",
    "10",
    "0",
    "x y",
    "",
    "caf\u00e9",
    "-",
    "-1",
    "--",
    "inf",
    "1e3",
    "2_0",
]
_COMMANDS = [
    [],
    ["--"],
    ["ls"],
    ["--", "ls", "-l"],
    ["sh", "-c", "echo --policy"],
    ["--", "--policy", "x"],
    ["-"],
]


def _random_argv(rng: random.Random) -> list[str]:
    argv = ["run"]
    for _ in range(rng.randrange(5)):
        option = rng.choice(RUN_OPTIONS)
        if option.action == "store_true":
            argv.append(option.flag if rng.random() > 0.1 else f"{option.flag}=1")
        elif rng.random() < 0.3:
            argv.append(f"{option.flag}={rng.choice(_VALUES)}")
        else:
            argv += [option.flag, rng.choice(_VALUES)]
    if rng.random() < 0.1:
        argv.append(rng.choice(["-h", "--allow-r", "--no-cache=", "--unknown", "--allow-read"]))
    return argv + rng.choice(_COMMANDS)


def test_what_it_takes_it_parses_as_argparse_does() -> None:
    rng = random.Random(16)  # noqa: S311 - a repeatable sample, not a secret
    taken = 0
    for _ in range(3000):
        argv = _random_argv(rng)
        quick = quick_run(argv)
        if quick is not None:
            taken += 1
            assert vars(quick) == _argparse(argv), argv
    assert taken > 1000  # the sample leans on what the quick way declines; users type the rest


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "/bin/true"],
        ["run", "ls", "-l", "--policy", "x"],
        ["run", "--policy=python", "--allow-read", "/a", "--allow-read=/b", "--timeout", "2.5", "--", "cmd"],
        ["run", "--proxy", "--no-cache", "--no-cgroups", "--memory-mb", "64", "--", "cmd", "--", "arg"],
        ["run", "--secret", "TOKEN=env:TOKEN", "--listen", "web=8080", "--audit-log", "/tmp/log", "cmd"],
        ["run"],
    ],
)
def test_plain_runs_take_the_quick_way(argv: list[str]) -> None:
    quick = quick_run(argv)
    assert quick is not None
    assert vars(quick) == _argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "-h"],
        ["run", "--help"],
        ["run", "--allow-r", "/x", "--", "true"],  # an abbreviation argparse accepts
        ["run", "--timeout", "soon", "--", "true"],  # a value argparse explains
        ["run", "--proxy=1", "--", "true"],
        ["run", "--allow-read"],
        ["run", "--timeout", "-1", "--", "true"],  # a dash: argparse decides what it is
        ["run", "-", "x"],
        ["learn", "-o", "x.toml", "--", "true"],
        ["doctor"],
        [],
    ],
)
def test_everything_else_is_argparses(argv: list[str]) -> None:
    assert quick_run(argv) is None
