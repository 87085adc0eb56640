"""Acceptance: privsep passes every case bubblewrap passes, as root and as a non-root user.

Each case runs first under bwrap with the same grants; if bwrap fails the
check, the case itself is wrong and the test says so. Then the same command
runs under ``privsep run`` with the flags a user would type, on a fresh copy
of the inputs, and must pass the same check. A failure prints both runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.programs.cases import CASES
from tests.programs.harness import Case, Run, execute, snapshot


def _params() -> list[object]:
    return [pytest.param(case, mode, id=f"{case.name}-{mode}") for case in CASES for mode in case.modes]


def _judge(case: Case, run: Run) -> str | None:
    """None if the run passes the case's check and left IN as it was, else why not."""
    try:
        case.check(run)
        after = snapshot(run.inp)
        before = run.in_before
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"the read-only IN changed: {changed}"
    except AssertionError as exc:
        return str(exc) or repr(exc)
    return None


def _run_and_judge(case: Case, runner: str, mode: str, base: Path) -> tuple[Run, str | None]:
    run = execute(case, runner, mode, base)
    return run, _judge(case, run)


@pytest.mark.parametrize(("case", "broker_user"), _params(), indirect=["broker_user"])
def test_program(case: Case, broker_user: str, shared_tmp: Path) -> None:
    """The case passes under bwrap (so it is a fair case), then under privsep."""
    bwrap, why = _run_and_judge(case, "bwrap", broker_user, shared_tmp)
    if why is not None:
        pytest.fail(f"bad case: bwrap itself fails it: {why}\n{bwrap.describe()}", pytrace=False)
    ours, why = _run_and_judge(case, "privsep", broker_user, shared_tmp)
    if why is not None:
        pytest.fail(
            f"privsep fails a case bwrap passes: {why}\n{ours.describe()}\n{bwrap.describe()}",
            pytrace=False,
        )
