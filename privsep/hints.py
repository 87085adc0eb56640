"""Hints for failures the broker never saw: paths on the command line that the sandbox hides.

With grants served by the kernel, an open outside the view is answered by the
kernel (ENOENT: the path does not exist in the child's filesystem) and never
reaches the broker, so no denial is recorded. The commonest cause is the
command line itself: ``privsep run -- cat /srv/in/x`` without a grant of
/srv/in. So when the command fails, the arguments are read as a user would
read them: each one that names a host path the child could not see (or could
not write, for a path still to be created) earns one ``privsep:`` line with
the flag that would have helped. A working directory the child could not
enter is named too. This is a heuristic over the command line, not a record
of what the program did: it only speaks when the command failed, and it
never suggests a path that does not exist on the host.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

from privsep.plan.view import ViewPlan

__all__ = ["outside_view_hints"]

_MAX_HINTS = 8
#: Directories too broad to suggest as a grant: name the file itself instead.
_BROAD = frozenset({"/", "/etc", "/home", "/root", "/var", "/usr", "/opt", "/srv", "/mnt", "/media", "/run"})


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _candidates(argv: Sequence[str]) -> list[str]:
    """Arguments that may be paths: every word, and the value of ``--opt=value`` / ``-oVALUE``."""
    out: list[str] = []
    for word in argv:
        if not word or "\x00" in word or len(word) > 4096:
            continue
        if word.startswith("-"):
            _, eq, value = word.partition("=")
            if eq and value:
                out.append(value)
            continue
        out.append(word)
    return out


class _View:
    def __init__(self, plan: ViewPlan) -> None:
        self._plan = plan

    def visible(self, path: str) -> bool:
        plan = self._plan
        if plan.tmp_size_mb is not None and _under(path, "/tmp"):
            # The child's /tmp is its own: only grants bound inside it show host files.
            return any(_under(path, b.path) for b in plan.binds if _under(b.path, "/tmp"))
        return (
            any(_under(path, b.path) for b in plan.binds)
            or path in plan.dirs
            or any(path == f for f, _ in plan.files)
        )

    def writable(self, path: str) -> bool:
        # A private /tmp is writable, but it is not the host's: only a writable bind is.
        binds = [b for b in self._plan.binds if _under(path, b.path)]
        return bool(binds) and max(binds, key=lambda b: len(b.path)).writable


def _suggest(path: str) -> str:
    """The directory the user most likely meant to grant: the file's own, unless that is too broad."""
    if os.path.isdir(path):
        return path
    parent = posixpath.dirname(path)
    return path if parent in _BROAD else parent


def outside_view_hints(argv: Sequence[str], cwd: str, child_cwd: str, plan: ViewPlan) -> list[str]:
    """One line per command-line path the sandbox hid or could not write, with the fix."""
    view = _View(plan)
    hints: dict[str, None] = {}
    if child_cwd != cwd and not view.visible(cwd):
        hints[
            f"the working directory {cwd} is outside the sandbox, so the command ran in {child_cwd}; "
            f"re-run with --allow-read={cwd} (or --allow-write={cwd} if it writes there)"
        ] = None
    for word in _candidates(argv[1:]):
        path = posixpath.normpath(posixpath.join(cwd, word))
        if os.path.lexists(path):
            if not view.visible(path):
                hints[f"{path} is outside the sandbox; re-run with --allow-read={_suggest(path)}"] = None
            continue
        parent = posixpath.dirname(path)
        if "/" not in word.rstrip("/") or word.endswith("/") or not os.path.isdir(parent):
            continue  # a plain word, or nowhere to create it: say nothing rather than guess
        if not view.writable(parent):
            where = "outside the sandbox" if not view.visible(parent) else "read-only in the sandbox"
            hints[f"{path} cannot be created: {parent} is {where}; re-run with --allow-write={parent}"] = None
    return list(hints)[:_MAX_HINTS]
