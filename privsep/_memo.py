"""``functools.cache`` for the modules a warm ``privsep run`` imports, without ``functools``.

Why (issue 16): ``functools`` imports ``collections`` (and ``reprlib``,
``keyword``, ``operator``), about 1 ms of every warm ``privsep run --
/bin/true``, for three caches of a value or two each. This one keeps
what a function returned for each distinct tuple of arguments, as
``functools.cache`` does, and holds at most ``limit`` of them (it starts
over when full: the callers here see one or two).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import TypeVar

    R = TypeVar("R")

__all__ = ["cached"]


def cached(make: Callable[..., R], limit: int = 64) -> Callable[..., R]:
    """``make``, computing each result once per distinct (hashable) positional arguments."""
    made: dict[tuple[Hashable, ...], R] = {}

    def get(*args: Hashable) -> R:
        try:
            return made[args]
        except KeyError:
            pass
        value = make(*args)
        if len(made) >= limit:
            made.clear()
        made[args] = value
        return value

    get.__doc__, get.__name__, get.__qualname__ = make.__doc__, make.__name__, make.__qualname__
    return get
