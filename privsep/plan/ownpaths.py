"""Paths the broker opens by name on its own behalf, and the grants that would let a sandbox reach them.

The broker opens some files by path while or after a sandbox runs, with its
own credentials: the audit log (created, then appended to), a secret's or an
injected header's source file (read when asked), privsep's plan cache
(written, and read by the next run as the plan to apply). A grant that lets
the sandbox write on, over or inside one of them hands the sandbox the
broker's hand: replaced by a link, the audit log appended to whatever root
file it names (``/etc/ld.so.preload``: root code in every later process), the
secret file read ``/etc/shadow``; an edited cache entry was the next run's
plan, binding what it liked (11th audit). So planning refuses such a grant,
with the path it reaches and what to do instead. Following links is then
safe: nothing on the way to these paths is the sandbox's to change.

A process guards its audit log and its cache directory (:func:`guard`); a
policy's secret files are checked with the policy's own grants
(``extra``). Broker-served write grants are checked as well as bound ones.
"""

from __future__ import annotations

from privsep.errors import PolicyError
from privsep.plan.importpath import (
    WRITES,
    held_forms,
    mounts,
    named_and_real,
    reach_forms,
    refuse_unknown_overlays,
    under,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["check_writes", "guard"]

#: Path (as named, and as resolved) -> (what it is, how to move it), for the rest of this process.
_guarded: dict[str, tuple[str, str]] = {}


def guard(path: str, what: str, move: str) -> None:
    """Refuse, for the rest of this process, write grants on, over or inside ``path``; ``what``
    names it in the refusal ("the audit log"), ``move`` says how to put it elsewhere."""
    for form in named_and_real(path):
        _guarded.setdefault(form, (what, move))


def check_writes(
    grants: Iterable[tuple[str, Iterable[str]]], extra: Iterable[tuple[str, str, str]] = ()
) -> None:
    """Refuse (PolicyError) a grant of ``(path, access words)`` that writes on, over or inside a
    guarded path or one of ``extra`` ``(path, what, move)``."""
    extra = list(extra)
    if not (_guarded or extra):
        return  # privsep run from its cache with no audit log: nothing to resolve
    writes = [granted for granted, access in grants if not WRITES.isdisjoint(access)]
    if not writes:
        return
    mounted = mounts()  # a bind mount is the same directory under another name (importpath.py)
    guarded: dict[str, tuple[str, str, str]] = {}  # form -> (path shown, what, move)
    for path, (what, move) in [*_guarded.items(), *((p, (w, m)) for p, w, m in extra)]:
        for named in named_and_real(path):
            for form in held_forms(named, mounted):
                guarded.setdefault(form, (named, what, move))
    shown_paths = [shown for shown, _, _ in guarded.values()]
    refuse_unknown_overlays(
        shown_paths, mounted, writes[0], "a file privsep opens by name with its own rights"
    )
    for granted in writes:
        for real in named_and_real(granted):
            for form in reach_forms(real, mounted):
                for path, (shown, what, move) in guarded.items():
                    if under(path, form) or under(form, path):
                        where = "is" if path == form else ("holds" if under(path, form) else "is inside")
                        raise PolicyError(
                            f"a grant to write {granted} is refused: it {where} {what} ({shown}), "
                            "which privsep opens by name with its own rights: a sandbox that changed "
                            "it, or put a link in its place or on its way, would have privsep read, "
                            "write or trust what the sandbox chose; grant a directory that does not "
                            f"reach it, or {move}"
                        )
