"""Hints for failures the broker never saw: paths on the command line that the sandbox hides.

With grants served by the kernel, an open outside the view is answered by the
kernel (ENOENT: the path does not exist in the child's filesystem) and never
reaches the broker, so no denial is recorded. The commonest cause is the
command line itself: ``privsep run -- cat /srv/in/x`` without a grant of
/srv/in. So when the command fails, the arguments are read as a user would
read them: each one that names a host path the child could not see (or could
not write, for a path still to be created) earns one ``privsep:`` line with
the flag that would have helped. A shell script given as one word
(``sh -c 'echo x > /srv/in/y'``) is read word by word too, for the paths it
names explicitly (absolute, or starting with ``./`` or ``../``). A working
directory the child could not enter is named last, and only where it may be
the cause: when an argument is relative, or when no argument explains the
failure; never for a directory too broad to grant (``/root``, ``/home``...),
where a run from one's home with absolute paths did not mean it. This is a
heuristic over the command line, not a record of what the program did: it
only speaks when the command failed, and it never suggests a path that does
not exist on the host.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Sequence

from privsep.plan.view import ViewPlan

__all__ = ["outside_view_hints"]

_MAX_HINTS = 8
#: Directories too broad to suggest as a grant: name the file itself instead.
_BROAD = frozenset({"/", "/etc", "/home", "/root", "/var", "/usr", "/opt", "/srv", "/mnt", "/media", "/run"})


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _script_paths(word: str) -> list[str]:
    """The explicit paths a shell script names (``echo x > /srv/in/y``): its words that start
    with ``/``, ``./`` or ``../``; a bare word in a script is too likely not a path."""
    lexer = shlex.shlex(word, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: not a script this can read
        return []
    return [t for t in tokens if t.startswith(("/", "./", "../")) and "$" not in t]


def _candidates(argv: Sequence[str]) -> list[str]:
    """Arguments that may be paths: every word, the value of ``--opt=value`` / ``-oVALUE``,
    and the explicit paths in a word that reads as a shell script (it holds a space)."""
    out: list[str] = []
    for word in argv:
        if not word or "\x00" in word or len(word) > 4096:
            continue
        if word.startswith("-"):
            _, eq, value = word.partition("=")
            if eq and value:
                out.append(value)
            continue
        if any(c.isspace() for c in word):
            out += _script_paths(word)
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

    def read_grant(self, path: str) -> str | None:
        """The grant (``--allow-read``) whose read-only bind shows ``path``, if it is one."""
        binds = [b for b in self._plan.binds if _under(path, b.path)]
        if not binds:
            return None
        inner = max(binds, key=lambda b: len(b.path))
        return inner.path if inner.access and not inner.writable else None

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


def outside_view_hints(
    argv: Sequence[str], cwd: str, child_cwd: str, plan: ViewPlan, *, explained: bool = False
) -> list[str]:
    """One line per command-line path the sandbox hid or could not write, with the fix.

    ``explained``: the run's report already names a cause (a denial, a command not found);
    the working directory is then named only when a relative argument depended on it.
    """
    view = _View(plan)
    hints: dict[str, None] = {}
    read_only: dict[str, None] = {}  # existing paths under read grants: said only if nothing else is
    candidates = _candidates(argv[1:])
    # A destination comes last (cp, mv, install, rsync): an existing directory there, after
    # another existing path, is written into, and --allow-write is the grant that works.
    existing = [w for w in candidates if os.path.lexists(posixpath.join(cwd, w))]
    destination = existing[-1] if len(existing) > 1 else None
    for word in candidates:
        path = posixpath.normpath(posixpath.join(cwd, word))
        if _under(path, "/proc") or _under(path, "/dev"):
            continue  # the sandbox's own (its /proc, its devices): no grant of the host's would help
        if path == "/tmp" and plan.tmp_size_mb is not None:
            continue  # the sandbox has a /tmp of its own; files in the host's are named one by one
        if os.path.lexists(path):
            if not view.visible(path):
                grant = _suggest(path)
                if word == destination and os.path.isdir(path):
                    hints[f"{path} is outside the sandbox; re-run with --allow-write={grant}"] = None
                else:
                    hints[
                        f"{path} is outside the sandbox; re-run with --allow-read={grant} "
                        f"(or --allow-write={grant} if it writes there)"
                    ] = None
            else:
                granted = view.read_grant(path)
                if granted is not None and word == destination and os.path.isdir(path):
                    hints[f"{path} is read-only in the sandbox; re-run with --allow-write={path}"] = None
                elif granted is not None:
                    # The kernel's EROFS reaches no broker: the failure may be a write here,
                    # or have nothing to do with the sandbox (grep finding nothing).
                    read_only[
                        f"{path} is read-only in the sandbox (a read grant); "
                        f"if the command writes it, re-run with --allow-write={granted}"
                    ] = None
            continue
        parent = posixpath.dirname(path)
        if "/" not in word.rstrip("/") or word.endswith("/") or not os.path.isdir(parent):
            continue  # a plain word, or nowhere to create it: say nothing rather than guess
        if not view.writable(parent):
            where = "outside the sandbox" if not view.visible(parent) else "read-only in the sandbox"
            # Conditional: the same failure is a plain ENOENT for a command that only reads it.
            hints[
                f"{path} cannot be created: {parent} is {where}; "
                f"if the command creates it, re-run with --allow-write={parent}"
            ] = None
    if not hints and not explained:
        hints.update(read_only)
    # A relative argument that names something in the working directory: it depended on it.
    relative = any(not w.startswith("/") and os.path.lexists(posixpath.join(cwd, w)) for w in candidates)
    named = any(f"={cwd} " in h or h.endswith(f"={cwd}") for h in hints)  # its grant is suggested
    if (
        child_cwd != cwd
        and not view.visible(cwd)
        and cwd not in _BROAD
        and not named
        and (relative or not (hints or explained))
    ):
        hints[
            f"the working directory {cwd} is outside the sandbox, so the command ran in {child_cwd}; "
            f"re-run with --allow-read={cwd} (or --allow-write={cwd} if it writes there)"
        ] = None
    return list(hints)[:_MAX_HINTS]


#: Where programs live on a host besides the sandbox's default PATH (sbin: servers, admin tools).
_HOST_BINS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def not_found_hint(argv0: str, search_path: str, plan: ViewPlan) -> str:
    """Why the sandbox found no ``argv0``, and the fix that works for where it is on the host."""
    base = f"command not found in the sandbox: {argv0}"
    if "/" in argv0:
        if os.path.lexists(argv0) and not _View(plan).visible(argv0):
            return (
                f"{base} is outside the sandbox; add {posixpath.dirname(argv0)} to the policy's [view] read"
            )
        return f"{base} (no such file)"
    dirs = [d for d in search_path.split(":") if d]
    for where in (*dirs, *(d for d in _HOST_BINS if d not in dirs)):
        found = posixpath.join(where, argv0)
        if not (os.path.isfile(found) and os.access(found, os.X_OK)):
            continue
        if not _View(plan).visible(found):
            return f"{base}; it is {found} on the host, outside the sandbox: add {where} to [view] read"
        if where not in dirs:
            return (
                f"{base}; it is {found}, which the sandbox shows, but {where} is not on its PATH "
                f"({search_path}): run {found}, or set PATH in the policy's [env]"
            )
    return (
        f"{base}: no such program on the sandbox's PATH ({search_path}) or on the host; "
        "the child sees only the paths of the policy's [view], plus /dev, /proc (and /tmp if granted)"
    )
