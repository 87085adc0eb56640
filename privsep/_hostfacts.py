"""What planning read from the host, written down so that a cached plan can be checked against it.

A plan is a function of the policy and of this host: ``plan/view.py``
resolves every path against it (is it there, a directory, a symlink to
where, who owns it, does a grant hold a socket or a set-id program), the
filter depends on the libseccomp it is compiled with, the environment the
policy passes through is read, the Landlock ABI is asked. Every such read
goes through a function here; while :func:`recording` is active each one
is noted as a fact: what was asked (a kind and its arguments) and what
was observed (JSON: a file's identity, a link's target, an errno).

:func:`hold` asks every question again and says whether each answer is
still the same. ``privsep run``'s plan cache (``plan/cache.py``) keeps the
facts beside the plan and uses it only when they all hold: a policy file
edited, a granted directory replaced by a symlink, a socket planted in a
grant, a library upgraded, each makes a fact fail, and the plan is made
anew. Nothing here decides anything; it only reads and compares.

A read that fails with an error other than a missing file is noted with
its errno too: the planner's answer to it (read_if_exists skips, a grant
turns broker-served) is part of the plan.
"""

from __future__ import annotations

import os
from contextvars import ContextVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Token
    from typing import Any

    #: One fact: [kind, arguments, observation], as JSON keeps it (lists, never tuples).
    Fact = list[Any]

__all__ = [
    "Fact",
    "Recording",
    "file_identity",
    "getenv",
    "hold",
    "incomplete",
    "lexists",
    "lstat",
    "observe",
    "read_bytes",
    "readlink",
    "realpath",
    "recording",
    "register",
    "stat",
]


class Recording:
    """The facts noted while a plan was made; ``complete`` is False if one could not be noted."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self.complete = True

    def note(self, kind: str, args: tuple[Any, ...], observed: object) -> None:
        self.facts.append([kind, list(args), observed])


_current: ContextVar[Recording | None] = ContextVar("privsep_hostfacts", default=None)

#: kind -> (the read, the part of its result that is observed). Replayed by :func:`hold`.
_KINDS: dict[str, tuple[Callable[..., Any], Callable[[Any], object]]] = {}


class recording:
    """Note every host read made in the block (this thread's, this context's). A class, not
    ``contextlib.contextmanager``: a warm ``privsep run`` never imports contextlib."""

    def __enter__(self) -> Recording:
        found = Recording()
        self._token: Token[Recording | None] = _current.set(found)
        return found

    def __exit__(self, *_exc: object) -> None:
        _current.reset(self._token)


def incomplete() -> None:
    """A read that cannot be replayed was made: the recording must not be trusted to stand for it."""
    found = _current.get()
    if found is not None:
        found.complete = False


def register(kind: str, read: Callable[..., Any], observed: Callable[[Any], object] = lambda x: x) -> None:
    """Make ``kind`` a fact :func:`observe` can note and :func:`hold` can replay."""
    if kind in _KINDS and _KINDS[kind] != (read, observed):
        raise ValueError(f"host fact kind {kind!r} is registered twice")
    _KINDS[kind] = (read, observed)


def _ask(kind: str, args: tuple[Any, ...]) -> tuple[Any, object, OSError | None]:
    read, observed = _KINDS[kind]
    try:
        result = read(*args)
    except OSError as exc:
        return None, ["error", exc.errno], exc
    return result, observed(result), None


def observe(kind: str, *args: Any) -> Any:
    """``kind``'s read of ``args``; noted when recording. An OSError is noted, then raised."""
    result, observed, error = _ask(kind, args)
    found = _current.get()
    if found is not None:
        found.note(kind, args, observed)
    if error is not None:
        raise error
    return result


def hold(facts: object) -> bool:
    """Whether every fact still holds here; False for anything that is not a list of facts."""
    if not isinstance(facts, list):
        return False
    try:
        for fact in facts:
            kind, args, observed = fact
            if kind not in _KINDS or not isinstance(args, list):
                return False
            if _ask(kind, tuple(args))[1] != observed:
                return False
    except Exception:  # a malformed fact, or a read that fails anew: it does not hold
        return False
    return True


# --- the reads ------------------------------------------------------------------------------


def _identity(st: os.stat_result) -> list[int]:
    """What the planner reads of a file: its type and mode bits, owner, and which file it is."""
    return [st.st_mode, st.st_uid, st.st_gid, st.st_dev, st.st_ino]


def _content_identity(st: os.stat_result) -> list[int]:
    """A file whose contents matter (a library): also its size and times, which change with them."""
    return [*_identity(st), st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_bytes(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


register("lstat", os.lstat, _identity)
register("stat", os.stat, _identity)
register("file", os.stat, _content_identity)
register("readlink", os.readlink)
register("realpath", os.path.realpath)
register("lexists", os.path.lexists)
register("env", os.environ.get)
# latin-1: any bytes as a JSON string, losslessly; compared whole.
register("read", _read_bytes, lambda data: data.decode("latin-1"))


def lstat(path: str) -> os.stat_result:
    result: os.stat_result = observe("lstat", path)
    return result


def stat(path: str) -> os.stat_result:
    result: os.stat_result = observe("stat", path)
    return result


def file_identity(path: str) -> os.stat_result:
    """``stat``, noting also what changes with the file's contents (for a library a plan depends on)."""
    result: os.stat_result = observe("file", path)
    return result


def readlink(path: str) -> str:
    result: str = observe("readlink", path)
    return result


def realpath(path: str) -> str:
    result: str = observe("realpath", path)
    return result


def lexists(path: str) -> bool:
    result: bool = observe("lexists", path)
    return result


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``: a variable the plan passes through to the sandbox."""
    result: str | None = observe("env", name)
    return result


def read_bytes(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of the file at ``path`` (a policy file)."""
    result: bytes = observe("read", path, limit)
    return result
