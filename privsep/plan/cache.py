"""``privsep run``'s plan cache: what a run computes from its policy, kept for the next run like it.

Why (issue 16): making a plan means loading the policy (pydantic: its import
and model alone cost many times a whole ``bwrap`` run), resolving the view
against the host and compiling the seccomp filter with libseccomp. The
next run with the same inputs would compute the same thing. So a run keeps
a :class:`Prepared` (the :class:`~privsep.plan.spawnplan.SpawnPlan` with
its compiled filter, the grants the broker pins, the timeout, the policy's
resolved input for the broker to validate if a request ever comes) and the
next one reads it back instead, importing no pydantic and no libseccomp.

When a kept plan is used: only when everything that made it is the same.

- The key, compared whole: privsep's version and the identity (inode,
  size, mtime, ctime) of every file of the package (it may be installed
  editable), the interpreter (path, version and build, ``sys.path``), the
  kernel (release and build), the uids and gids, the working directory,
  and the caller's inputs (the policy named, the command-line grants and
  limits: everything ``privsep run`` gives the planner but the command,
  whose argv is put into the kept plan anew).
- The facts (``privsep._hostfacts``), asked again: every policy file read
  (its bytes), every path the view resolved (type, mode, owner, which
  file), every symlink's target, every grant's sockets, FIFOs and set-id
  files, the environment passed through, the Landlock ABI, the identity
  of the libseccomp the filter was compiled with, and of the files of the
  packages planning used (pydantic, pyseccomp: :func:`note_libraries`).
  One that does not hold, and the plan is made anew (and kept in its place).

Where: ``/var/cache/privsep`` for root, ``$XDG_CACHE_HOME/privsep`` (or
``~/.cache/privsep``) for anyone else; ``PRIVSEP_CACHE_DIR`` names another,
``PRIVSEP_NO_CACHE=1`` (or ``privsep run --no-cache``) turns it off. The
directory is made 0700; entries are written 0600 to a temporary name and
renamed into place. A cache must never loosen a sandbox, so it is trusted
only as far as its owner: a directory not owned by this euid, or writable
by group or others, is neither read nor written; an entry not owned by
this euid, not a regular file, readable or writable by anyone else, too
large, or malformed in any way is ignored (and replaced by the next run).
Reading one never raises: the worst a bad cache can do is cost a cold run.
The entries hold what the plan holds, the passed-through environment
included; never a secret's value (secrets are read when asked for).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
import zlib

from privsep import _hostfacts as host
from privsep import _jsontext
from privsep._record import Record, replace
from privsep._version import __version__
from privsep.plan import wire
from privsep.plan.spawnplan import SpawnPlan, command_argv

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DIR_ENV",
    "DISABLE_ENV",
    "FORMAT",
    "MAX_ENTRIES",
    "Prepared",
    "directory",
    "key",
    "load",
    "note_libraries",
    "store",
]

#: Bumped when what an entry holds changes meaning (the key holds it too).
FORMAT = 1
DISABLE_ENV = "PRIVSEP_NO_CACHE"
DIR_ENV = "PRIVSEP_CACHE_DIR"
#: Entries kept; past it the least recently written go (a cwd or a grant per entry adds up).
MAX_ENTRIES = 64
_MAX_BYTES = 32 << 20  # a plan with a large view and its facts is well under this
_SUFFIX = ".plan"
_ABANDONED_S = 600  # a temporary entry this old was left by a run that died writing it
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What a plan is made with besides privsep and the standard library (sys.version names that):
#: validating the policy, compiling the filter.
_LIBRARIES = (
    "pydantic",
    "pydantic.version",
    "pydantic_core",
    "pydantic_core._pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
    "pyseccomp",
)


class Prepared(Record):
    """What ``privsep run`` computes from the policy before it opens anything."""

    __slots__ = ("pins", "plan", "policy", "timeout")

    plan: SpawnPlan
    pins: tuple[tuple[int, str, bool], ...]
    """The ``[[files]]`` grants the broker pins at start: (index, path, writes)."""
    timeout: float | None
    """The policy's ``[limits] timeout_seconds``; None for none."""
    policy: str
    """The policy's resolved input (``policy.load.Resolved``) as JSON: the broker validates it
    into the model when the first request needs it, and not before."""

    def __init__(
        self, plan: SpawnPlan, pins: tuple[tuple[int, str, bool], ...], timeout: float | None, policy: str
    ) -> None:
        self._assign(locals())

    def for_command(self, argv: list[str]) -> Prepared:
        """This plan running ``argv``: the command is not in the key, only its argv differs."""
        return replace(self, plan=replace(self.plan, argv=command_argv(argv)))


def directory() -> str | None:
    """Where the cache lives for this process; None when it is off."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    named = os.environ.get(DIR_ENV)
    if named:
        return named
    if os.geteuid() == 0:
        return "/var/cache/privsep"
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # relative values are to be ignored (XDG base directory spec)
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "privsep")


def note_libraries() -> None:
    """While recording: the files of the third-party packages this process made a plan with
    (the policy's model, the filter's compiler), so that an upgrade of one makes the facts fail."""
    for name in _LIBRARIES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            host.file_identity(path)


def key(inputs: object) -> str | None:
    """The key of a plan made from ``inputs`` (JSON data) here and now; None if there is none
    (the working directory is gone)."""
    try:
        cwd = os.getcwd()
        sources = _sources()
    except OSError:
        return None
    uname = os.uname()
    ids = [os.geteuid(), os.getegid(), os.getuid(), os.getgid()]
    python = [sys.executable, sys.version, sys.path]
    return _jsontext.dumps(
        [FORMAT, __version__, sources, python, uname.release, uname.version, ids, cwd, inputs]
    )


def load(key: str) -> Prepared | None:
    """The plan kept for ``key``, if there is one that still holds here; never raises."""
    where = directory()
    if where is None:
        return None
    try:
        return _load(where, key)
    except Exception:  # any fault of a cache entry makes a cold run, never an error
        return None


def _load(where: str, key: str) -> Prepared | None:
    dir_fd = _opened(where, create=False)
    if dir_fd is None:
        return None
    try:
        data = _read(dir_fd, _name(key))
    finally:
        os.close(dir_fd)
    if data is None:
        return None
    head, _, body = data.partition(b"\n")
    header = _jsontext.loads(head)
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("key") != key:
        return None
    if not host.hold(header.get("facts")):
        return None
    return wire.decode(Prepared, body)


def store(key: str, facts: list[host.Fact], prepared: Prepared) -> None:
    """Keep ``prepared`` for ``key``, valid while ``facts`` hold; quietly nothing if it cannot."""
    where = directory()
    if where is None:
        return
    try:
        header = _jsontext.dumps({"format": FORMAT, "key": key, "facts": facts})
        data = header.encode() + b"\n" + wire.encode(prepared)
        if len(data) > _MAX_BYTES:
            return
        dir_fd = _opened(where, create=True)
        if dir_fd is None:
            return
        try:
            _evict(dir_fd)
            _write(dir_fd, _name(key), data)
        finally:
            os.close(dir_fd)
    except (OSError, TypeError, ValueError):
        return  # a read-only home, a full disk, a fact JSON cannot hold: the next run is cold too


# --- the key -----------------------------------------------------------------------------------


def _sources() -> list[list[Any]]:
    """Every file of the privsep package (not its bytecode) with what changes when it does."""
    found: list[list[Any]] = []
    stack = [_PACKAGE]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name == "__pycache__":
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                else:
                    found.append([entry.path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    found.sort()
    return found


def _name(key: str) -> str:
    """The entry's file name: two checksums of the key, which only spread entries (the key is
    stored and compared whole, so two keys sharing a name only take each other's place)."""
    raw = key.encode()
    return f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}{_SUFFIX}"


# --- the directory and its entries -------------------------------------------------------------


def _trusted(st: os.stat_result, *, private: bool) -> bool:
    """Owned by this euid, and writable by no one else (an entry: not readable by anyone else)."""
    others = 0o077 if private else 0o022
    return st.st_uid == os.geteuid() and not st.st_mode & others


def _opened(where: str, *, create: bool) -> int | None:
    """The cache directory's fd (the caller's to close), or None when it is missing (and not
    to be made) or not trusted."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(where, flags)
    except FileNotFoundError:
        if not create:
            return None
        os.makedirs(where, mode=0o700, exist_ok=True)
        fd = os.open(where, flags)
    try:
        trusted = _trusted(os.fstat(fd), private=False)
    except BaseException:
        os.close(fd)
        raise
    if not trusted:
        os.close(fd)
        return None
    return fd


def _read(dir_fd: int, name: str) -> bytes | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _trusted(st, private=True) or st.st_size > _MAX_BYTES:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > _MAX_BYTES:
                return None
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write(dir_fd: int, name: str, data: bytes) -> None:
    temporary = f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask left
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.close(fd)
    os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _evict(dir_fd: int) -> None:
    """Make room for one more entry: the least recently written go past MAX_ENTRIES - 1 (and
    what a killed run left half-written)."""
    listed = os.listdir(dir_fd)
    names = [n for n in listed if n.endswith(_SUFFIX) and not n.startswith(".")]
    for name in (n for n in listed if n.startswith(".") and _SUFFIX in n):
        try:
            if time.time() - os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime > _ABANDONED_S:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
    if len(names) < MAX_ENTRIES:
        return
    dated = []
    for name in names:
        try:
            dated.append((os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns, name))
        except OSError:
            pass
    dated.sort()
    for _, name in dated[: len(dated) - MAX_ENTRIES + 1]:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
