"""The handback of worker results to the loop (broker/workers.py)."""

from __future__ import annotations

import pytest

from privsep.broker.workers import Handback


def test_a_continuation_that_fails_is_reported_and_the_others_still_run(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Rule 6: a bug of ours in one worker's continuation must not stop the loop (and with it
    every sandbox): the next continuations run, and the failure is said, escaped."""
    back = Handback()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug \x1b[2J")

    try:
        back.put(lambda: ran.append("before"))
        back.put(broken)
        back.put(lambda: ran.append("after"))
        back.wake()
        back.run()
    finally:
        back.close()
    assert ran == ["before", "after"]
    err = capfd.readouterr().err
    assert "privsep: internal error while finishing a worker's result" in err
    assert "RuntimeError: a bug \\x1b[2J" in err and "\x1b" not in err
