"""Brokered file operations, resolved without races.

Chromium's and Firefox's brokers check a path string, then open it: a
symlink swapped in between wins. Here the check picks a *grant*, and the
kernel does the rest: every granted directory is pinned as an ``O_PATH``
fd when the policy loads, and every open is ``openat2`` beneath that fd
with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` (and
``RESOLVE_NO_SYMLINKS`` unless the rule allows links, which then still
cannot leave the grant). Whatever the child renames or swaps, the file
that comes back is beneath the grant, or nothing comes back.

Open flags are fixed here from the mode and the granted access; the child
never sends flags. No ``O_PATH``, no ``O_TMPFILE``, no directories (a
directory fd would let the child ``openat`` around), only regular files.
Files are created 0600. ``O_NONBLOCK`` during the open keeps a FIFO from
stalling the broker; it is cleared before the fd is handed over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cache

from privsep import _linux
from privsep.broker import notruncate
from privsep.broker.actas import acting_as, current_uid, switches
from privsep.broker.answers import Answer, Refusal, denied, failed
from privsep.broker.pins import Pins, pin_specs
from privsep.broker.relay import AppendRelay
from privsep.policy.decide import (
    CREATES_IF_MISSING,
    OPEN_NEEDS,
    Access,
    FileDecision,
    FileRules,
    check_path,
    rules_within,
)
from privsep.policy.model import Policy
from privsep.protocol import OPEN_FLAGS, ErrorCode, is_utf8, listing_page

_RESOLVE = _linux.RESOLVE_BENEATH | _linux.RESOLVE_NO_MAGICLINKS
_RESOLVE_NO_SYMLINKS = _RESOLVE | _linux.RESOLVE_NO_SYMLINKS
_OPENING = os.O_NOCTTY | os.O_NONBLOCK  # O_NONBLOCK: a FIFO cannot stall the broker (cleared after)

_TRUNCATE = frozenset({Access.TRUNCATE})
_WRITE = frozenset({Access.WRITE})
_READ = OPEN_NEEDS["r"]
_READ_FLAGS = OPEN_FLAGS["r"] | _OPENING


#: Most allowed read paths remembered per policy (each at most MAX_PATH characters, twice).
_MAX_READS = 256
#: An allowed read, ready to open: the decision, the pinned dirfd, the path beneath it (and
#: encoded), openat2's flags and RESOLVE flags, the (uid, gid) to act as there (None: as the
#: broker itself), the rule's name.
_ReadTarget = tuple[FileDecision, int, str, bytes, _linux.OpenHow, tuple[int, int] | None, str | None]
_READ_OPEN = _READ_FLAGS | os.O_CLOEXEC


def _rule(decision: FileDecision) -> str | None:
    return None if decision.rule is None else _rule_name(decision.rule)


@cache
def _rule_name(index: int) -> str:
    return f"files[{index}]"  # named in every answer and audit record: made once per rule


class FileService:
    """The file operations of one policy; owns the pinned directory fds."""

    def __init__(self, policy: Policy, pins: Pins | None = None) -> None:
        """``pins``: the policy's grants, pinned already (``privsep run`` pins them at start and
        builds the rest on the first request); by default they are pinned here."""
        self._policy = policy
        self._rules = FileRules(policy)
        self._held = Pins(pin_specs(policy)) if pins is None else pins
        self._pins = self._held.by_index
        #: Allowed reads by path: what deciding and finding the grant gave, a pure function of the
        #: policy (immutable) and the path, so a repeated open skips both (bounded: _MAX_READS).
        self._reads: dict[str, _ReadTarget] = {}

    def close(self) -> None:
        # The remembered reads hold the pins' fd numbers: none may outlive them (the number
        # could be another file's by the next open).
        self._reads.clear()
        self._held.close()

    # -- decisions --------------------------------------------------------

    def _decide(self, path: str, need: frozenset[Access]) -> FileDecision:
        decision = self._rules.decide(path, need)  # checks the path first: allowed, it is sound
        if not decision.allowed:
            reason = check_path(path)
            if reason is not None:
                raise denied(f"{reason}; paths must be absolute and normalised")
            raise denied(decision.message, allow=decision.allow_flag, rule=_rule(decision), subject=path)
        return decision

    def _target(self, decision: FileDecision) -> tuple[int, str]:
        """(dirfd, relative path) to resolve beneath; '.' is the grant itself."""
        assert decision.rule is not None
        pin = self._pins[decision.rule]
        if pin.name is not None:
            if decision.relative:
                # A path beneath a granted *file* (FILE/x) is not that file.
                raise failed("a component of the path is not a directory", rule=_rule(decision))
            return pin.fd, pin.name
        return pin.fd, decision.relative or "."

    @staticmethod
    def _resolve_flags(decision: FileDecision) -> int:
        return _RESOLVE if decision.symlinks else _RESOLVE_NO_SYMLINKS

    def _open(self, decision: FileDecision, flags: int) -> int:
        dirfd, relative = self._target(decision)
        mode = 0o600 if flags & os.O_CREAT else 0  # openat2 refuses a mode without O_CREAT
        resolve = _RESOLVE if decision.symlinks else _RESOLVE_NO_SYMLINKS
        try:
            return _linux.openat2(dirfd, relative, flags | os.O_CLOEXEC, mode, resolve)
        except OSError as exc:
            raise _refusal(exc, decision) from None

    def _as_owner(self, decision: FileDecision) -> AbstractContextManager[None]:
        """A root broker acts beneath the grant as its owner (actas.py); any other broker as itself."""
        assert decision.rule is not None
        return acting_as(*self._pins[decision.rule].owner)

    def _open_writable(self, decision: FileDecision, flags: int) -> int:
        """Open for writing, never a set-id or file-capability program nor a file with other names
        (checked before any O_TRUNC).

        The view binds such files read-only (guarantee 16); a broker open reaches the
        host's tree, so the broker checks the inode itself: rewriting a setuid-root
        program through a shared mapping keeps its bit.
        """
        if flags & os.O_EXCL:
            return self._open(decision, flags)  # a new file or nothing: no privileged inode to meet
        try:
            found = self._open(decision, os.O_PATH)
        except Refusal as refusal:
            if refusal.errno != errno.ENOENT or not flags & os.O_CREAT:
                raise
            fd = self._open(decision, flags)  # a new file: nothing privileged to protect yet
            try:
                _refuse_privileged(fd, decision)
            except BaseException:
                os.close(fd)
                raise
            return fd
        try:
            _refuse_privileged(found, decision)
            try:
                # The very inode checked, reopened through the broker's own fd: no second lookup.
                return os.open(f"/proc/self/fd/{found}", (flags & ~os.O_CREAT) | os.O_CLOEXEC)
            except OSError as exc:
                raise _refusal(exc, decision) from None
        finally:
            os.close(found)

    @contextmanager
    def _parent(self, decision: FileDecision) -> Iterator[tuple[int, str]]:
        """The directory holding the target, opened beneath the grant, and the target's name."""
        assert decision.rule is not None
        pin = self._pins[decision.rule]
        if pin.name is not None:  # a file grant: its pinned directory is the parent
            self._target(decision)  # refuses FILE/x
            yield pin.fd, pin.name
            return
        if not decision.relative:
            raise denied(
                "the granted directory itself cannot be created, removed or renamed", rule=_rule(decision)
            )
        parent, name = os.path.split(decision.relative)
        fd = self._open_dir(decision, parent or ".")
        try:
            yield fd, name
        finally:
            os.close(fd)

    def _open_dir(self, decision: FileDecision, relative: str) -> int:
        dirfd, _ = self._target(decision)
        try:
            return _linux.openat2(
                dirfd, relative, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, self._resolve_flags(decision)
            )
        except OSError as exc:
            raise _refusal(exc, decision) from None

    # -- operations -------------------------------------------------------

    def open_read(self, path: str) -> tuple[int, str | None]:
        """``open(path, "r")``'s fd and deciding rule: most opens, and the request server's fast path.

        What ``open`` does for "r", without the steps that cannot apply (append-only,
        create, truncate, set-id checks), and without ``_hand_over``'s access-mode check:
        an open file description's access mode is the one open(2) was given, and here it is
        ``_READ_FLAGS``'s own O_RDONLY (the child checks it again, from its side). A path
        opened before is not decided again (``_reads``); it is resolved beneath the grant anew.
        """
        target = self._reads.get(path)
        if target is None:
            target = self._read_target(path)
        decision, dirfd, relative, encoded, how, owner, rule = target
        if owner is None:  # the broker is the grant's owner already (acting_as would change nothing)
            try:
                fd = _linux.openat2_how(dirfd, relative, encoded, how)
            except OSError as exc:
                raise _refusal(exc, decision) from None
        else:
            with acting_as(*owner):
                try:
                    fd = _linux.openat2_how(dirfd, relative, encoded, how)
                except OSError as exc:
                    raise _refusal(exc, decision) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device, a directory: never handed over
                raise _not_regular(decision)
            # Blocking again, as builtins.open's fds are: O_NONBLOCK is the one status flag
            # _READ_OPEN sets. os.set_blocking is one ioctl(FIONBIO); fcntl.fcntl with an int
            # argument first fails to parse it as a string, building and dropping a TypeError.
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, rule

    def _read_target(self, path: str) -> _ReadTarget:
        """Decide a read of ``path`` and find where to open it; kept when allowed (``_reads``)."""
        decision = self._decide(path, _READ)  # raises the refusal: a refused path is never kept
        dirfd, relative = self._target(decision)
        assert decision.rule is not None
        uid, gid = self._pins[decision.rule].owner
        owner = (uid, gid) if switches(uid, gid) else None
        how = _linux.open_how(_READ_OPEN, 0, self._resolve_flags(decision))
        target = (decision, dirfd, relative, os.fsencode(relative), how, owner, _rule(decision))
        if len(self._reads) >= _MAX_READS:
            self._reads.clear()
        self._reads[path] = target
        return target

    def open(self, path: str, mode: str) -> Answer:
        if mode == "r":
            fd, rule = self.open_read(path)
            return Answer(fd=fd, rule=rule)
        need, flags = OPEN_NEEDS[mode], OPEN_FLAGS[mode]
        decision = self._decide(path, need)
        append_only = Access.APPEND in need and not self._rules.decide(path, _WRITE).allowed
        if append_only and mode == "a+":
            raise denied(
                "an append-only grant is served through a pipe the broker appends from, which "
                'cannot be read back: open it with "a" to append and "r" to read',
                rule=_rule(decision),
                subject=path,
            )
        if mode in CREATES_IF_MISSING:
            with_create = self._rules.decide(path, need | {Access.CREATE})
            if with_create.allowed:
                decision, flags = with_create, flags | os.O_CREAT
        flags |= _OPENING
        if flags & os.O_ACCMODE == os.O_RDONLY:
            with self._as_owner(decision):
                fd = self._open(decision, flags)
        else:

            def open_it() -> int:
                with self._as_owner(decision):  # on the thread that opens
                    return self._open_writable(decision, flags)

            if self._rules.decide(path, _TRUNCATE).allowed:
                fd = open_it()
            else:
                # The fd itself must refuse ftruncate: opened inside a Landlock domain that denies it.
                fd = notruncate.shared().run(open_it)
        fd = self._hand_over(fd, decision, flags)
        if append_only:
            # The fd stays here: the child gets a pipe, and the broker only ever appends (relay.py).
            relay, inside = AppendRelay.open(fd, self._policy.limits.file_size_mb << 20, path)
            return Answer(fd=inside, rule=_rule(decision), relay=relay)
        return Answer(fd=fd, rule=_rule(decision))

    @staticmethod
    def _hand_over(fd: int, decision: FileDecision, flags: int) -> int:
        """``fd``, opened with ``flags``, made fit to hand over: a regular file, blocking, of the access
        mode granted; closed if it is not."""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _not_regular(decision)
            # Hand over exactly what was granted: drop O_NONBLOCK, check the access mode.
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & os.O_APPEND)
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != flags & os.O_ACCMODE:
                raise failed("internal: the opened file has an unexpected access mode")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def stat(self, path: str) -> Answer:
        try:
            decision = self._decide(path, frozenset({Access.READ}))
        except Refusal:
            decision = self._decide(path, frozenset({Access.LIST}))
        with self._as_owner(decision):
            fd = self._open(decision, os.O_PATH)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        result: dict[str, object] = {
            "mode": st.st_mode, "ino": st.st_ino, "dev": st.st_dev, "nlink": st.st_nlink,
            "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
            "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
        }  # fmt: skip
        return Answer(result, rule=_rule(decision))

    def listdir(self, path: str, offset: int = 0) -> Answer:
        """One page of the sorted names (see protocol.listing_page): any directory, any names."""
        decision = self._decide(path, frozenset({Access.LIST}))
        with self._as_owner(decision):
            fd = self._open(decision, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
        try:
            names = sorted(n for n in os.listdir(fd) if is_utf8(n))  # the wire is JSON text
        finally:
            os.close(fd)
        page, following = listing_page(names, offset)
        result: dict[str, object] = {"names": page}
        if following is not None:
            result["next"] = following
        return Answer(result, rule=_rule(decision))

    def mkdir(self, path: str) -> Answer:
        decision = self._decide(path, frozenset({Access.CREATE}))
        with self._as_owner(decision), self._parent(decision) as (dirfd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=dirfd)
            except OSError as exc:
                raise _refusal(exc, decision) from None
        return Answer(rule=_rule(decision))

    def unlink(self, path: str) -> Answer:
        decision = self._decide(path, frozenset({Access.CREATE}))
        with self._as_owner(decision), self._parent(decision) as (dirfd, name):
            _refuse_endpoint(dirfd, name, decision)
            try:
                os.unlink(name, dir_fd=dirfd)
            except OSError as exc:
                raise _refusal(exc, decision) from None
        return Answer(rule=_rule(decision))

    def rename(self, src: str, dst: str) -> Answer:
        # Both decided before anything changes: a denial leaves the tree as it was.
        src_decision = self._decide(src, frozenset({Access.CREATE}))
        dst_decision = self._decide(dst, frozenset({Access.CREATE}))
        for path, decision in ((src, src_decision), (dst, dst_decision)):
            inner = rules_within(self._policy, path)
            if inner:
                raise denied(
                    f"{self._policy.files[inner[0]].describe(inner[0])} lies beneath it, and a rename would "
                    "carry what that rule decides out from under it; rename the entries inside instead",
                    rule=_rule(decision),
                    subject=path,
                )
        with (
            self._as_owner(src_decision),
            self._parent(src_decision) as (src_dir, src_name),
            self._parent(dst_decision) as (dst_dir, dst_name),
        ):
            _refuse_endpoint(src_dir, src_name, src_decision)
            _refuse_endpoint(dst_dir, dst_name, dst_decision)
            try:
                os.rename(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
            except OSError as exc:
                raise _refusal(exc, dst_decision) from None
        return Answer(rule=f"{_rule(src_decision)} -> {_rule(dst_decision)}")

    def connect_unix(self, path: str) -> tuple[FileDecision, int]:
        """Resolve a unix socket beneath its grant; returns an O_PATH fd to connect through."""
        decision = self._decide(path, frozenset({Access.CONNECT}))
        with self._as_owner(decision):
            fd = self._open(decision, os.O_PATH)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            raise failed("not a unix socket", rule=_rule(decision))
        return decision, fd


def _not_regular(decision: FileDecision) -> Refusal:
    return failed(
        "not a regular file; only regular files can be opened through the broker",
        rule=_rule(decision),
        errno=errno.EACCES,
    )


def _refuse_endpoint(dirfd: int, name: str, decision: FileDecision) -> None:
    """Never remove, move or replace a unix socket or a FIFO: it may be a host daemon's.

    The view masks them in kernel-served grants (a mount point cannot be unlinked);
    the broker works on the host's tree, where no mask is.
    """
    try:
        mode = os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode
    except OSError:
        return  # nothing there (or unreadable): the operation itself answers
    if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
        raise denied(
            "it is a unix socket or a FIFO, which the broker never removes, moves or replaces "
            "(a host process may be listening on it)",
            rule=_rule(decision),
        )


def _refuse_privileged(fd: int, decision: FileDecision) -> None:
    """Refuse a file whose contents run with privileges (set-id bits or file capabilities), or
    that has other names: a write would change it under every name, outside the grant too (a
    package cache shares its files with the environments it installed: fresh-eyes audit 15)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise denied(
            f"the file has {st.st_nlink - 1} other name(s) (hard links, as a package cache's files "
            "have), which a write through this one would change too; it is never opened for writing",
            rule=_rule(decision),
        )
    privileged = bool(st.st_mode & _linux.SETID_BITS)
    if not privileged and stat.S_ISREG(st.st_mode):
        try:
            os.getxattr(f"/proc/self/fd/{fd}", "security.capability")
            privileged = True
        except OSError:
            pass  # ENODATA: no capabilities (or no xattr support)
    if privileged:
        raise denied(
            "the file is a setuid, setgid or file-capability program, which is never opened for writing "
            "(whoever later ran it would run what the sandbox wrote, with its privileges)",
            rule=_rule(decision),
        )


def _refusal(exc: OSError, decision: FileDecision) -> Refusal:
    """Turn an errno from resolving beneath a grant into a reply that explains it."""
    rule = _rule(decision)
    code = exc.errno
    if code == errno.ENOENT:
        return Refusal(ErrorCode.NOT_FOUND, "no such file or directory", rule=rule, errno=code)
    if code == errno.EXDEV:
        return denied(
            f"the path leads outside the grant of {rule} (through '..' or a symbolic link)", rule=rule
        )
    if code == errno.ELOOP:
        return denied(f"a symbolic link is in the way, and {rule} does not allow symlinks", rule=rule)
    if code in (errno.EACCES, errno.EPERM):
        uid = current_uid()
        who = "the broker" if uid == os.geteuid() else "the grant's owner, as whom the broker acts there"
        return denied(f"the host's file permissions refuse it to {who} (uid {uid})", rule=rule)
    if code == errno.ENOTDIR:
        return failed("a component of the path is not a directory", rule=rule, errno=code)
    name = errno.errorcode.get(code or 0, "error")
    return failed(f"{name}: {os.strerror(code or 0)}", rule=rule, errno=code)
