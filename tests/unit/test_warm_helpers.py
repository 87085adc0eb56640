"""The warm path's stand-ins for standard-library layers (issue 16): ``_assemble._Undo`` for
``contextlib.ExitStack``, ``_memo.cached`` for ``functools.cache``, ``_signals`` for ``signal``.
Each must do what the part it replaces did for its callers."""

from __future__ import annotations

import signal

import pytest

from privsep import _signals
from privsep._assemble import _Undo
from privsep._memo import cached


def test_undo_runs_every_step_newest_first_once_even_when_one_raises() -> None:
    ran: list[str] = []
    undo = _Undo()
    undo.push(ran.append, "first")
    undo.push(lambda: (_ for _ in ()).throw(OSError("second failed")))
    undo.push(ran.append, "third")
    undo.push(lambda: (_ for _ in ()).throw(ValueError("fourth failed")))
    with pytest.raises(OSError, match="second failed") as caught:
        undo.run()
    assert ran == ["third", "first"]
    # the later failure raised, the earlier its context, as ExitStack chains them
    assert isinstance(caught.value.__context__, ValueError)
    undo.run()  # nothing left: no step runs twice
    assert ran == ["third", "first"]


def test_cached_computes_once_per_arguments_and_starts_over_when_full() -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    fast = cached(add, limit=2)
    assert (fast(1, 2), fast(1, 2), fast(2, 2)) == (3, 3, 4)
    assert calls == [(1, 2), (2, 2)]
    assert fast(3, 3) == 6  # full: it starts over, and the result is still right
    assert fast(1, 2) == 3
    assert calls == [(1, 2), (2, 2), (3, 3), (1, 2)]
    assert fast.__name__ == "add"


def test_signals_are_the_signal_modules_numbers_and_calls() -> None:
    for name in _signals.__all__:
        if name.startswith("SIG"):
            assert getattr(_signals, name) == getattr(signal, name), name
    assert _signals.name(15) == "SIGTERM"
    assert _signals.name(200) == "signal 200"
    previous = _signals.signal(signal.SIGUSR1, _signals.SIG_IGN)
    try:
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        _signals.signal(signal.SIGUSR1, previous)
