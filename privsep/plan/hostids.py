"""A host uid and gid of its own for each live sandbox of a root broker.

Why: with one shared id (the host's ``nobody``, as before), files owned by
nobody belonged to every sandbox, a host process running as nobody could
signal or trace a sandboxed command, and the per-uid kernel counters
(``RLIMIT_NPROC``, inotify instances, message-queue bytes...) were shared by
every sandbox and the host's nobody. So a root broker claims one id H per
sandbox, used as both its uid and its gid on the host, and releases it when
the sandbox has ended. Inside, the sandbox still sees 65534 (its own user
namespace maps 65534 to H: ``privsep.confine.identity.enter_user_namespace``).
The claim is the broker's, made before the fork
(:func:`privsep.plan.spawnplan.claim_host_ids`) and held in ``Spawned``.

The range is reserved for privsep, in this order of precedence:

- ``PRIVSEP_IDS=FIRST:COUNT`` in the broker's environment;
- an entry for the name ``privsep`` in both ``/etc/subuid`` and
  ``/etc/subgid`` (the same FIRST:COUNT in both). This is how podman's
  ``--userns=auto`` reserves its pool (the name ``containers``), and tools
  that hand out subordinate ids (``useradd``) then avoid it;
- 2000000000:65536 otherwise. That lies above the subordinate ids
  ``useradd`` hands out (100000-600100000 by default), above systemd's
  container ranges (524288-1879048191), below its "foreign" range
  (2147352576-) and below 2^31, where tools that read a uid as signed break.

The range must lie in 65536-2147483647 and must not hold the id of any
account in ``/etc/passwd`` or ``/etc/group``, nor overlap anyone else's
subordinate ids in ``/etc/subuid`` or ``/etc/subgid``: a sandbox's id must
belong to no one else. A range that breaks this is refused with the
account it would collide with. (Only the local files are read: accounts a
network directory serves are not seen; pick a range the directory leaves
unused.)

Claims must hold across brokers (several ``privsep run`` at once, a test
suite's parallel workers), and outlive no broker. Each claimed id is a file
in ``/run/privsep/ids`` named after it, created with ``O_EXCL`` and locked
with ``flock`` for the sandbox's lifetime. Releasing unlinks it, then
closes it. A broker that is killed leaves its file behind, but the kernel
drops its lock with its last fd: an unlocked file is a free id, taken over
by the next claimant that picks it, and removed by a sweep that about one
claim in 64 makes (:func:`sweep`). Claiming costs a few syscalls, no
subprocess: probing starts at a random id of the range, so it rarely meets
a claimed one.
"""

from __future__ import annotations

import fcntl
import os

from privsep._memo import cached
from privsep._record import Record
from privsep.errors import ConfinementError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_FIRST",
    "ENV_VAR",
    "LOCK_DIR",
    "Claim",
    "IdRange",
    "census",
    "check_range",
    "claim",
    "configured_range",
    "current_range",
    "sweep",
]

ENV_VAR = "PRIVSEP_IDS"
DEFAULT_FIRST = 2_000_000_000
DEFAULT_COUNT = 65536
LOCK_DIR = "/run/privsep/ids"
#: The name whose /etc/subuid and /etc/subgid entries reserve the range (as podman's "containers").
SUBID_NAME = "privsep"
#: Below: 16-bit ids, nobody (65534) and (uid16_t)-1 among them. Above: ids tools read as negative.
MIN_FIRST = 65536
MAX_LAST = 2**31 - 1
_STEP = "host ids"
#: One claim in this many also sweeps away the lock files killed brokers left.
_SWEEP_ONE_IN = 64
_HOW = f"set {ENV_VAR}=FIRST:COUNT (or a '{SUBID_NAME}:FIRST:COUNT' line in /etc/subuid and /etc/subgid)"


class IdRange(Record):
    """``count`` ids from ``first``; ``source`` says where the range was configured."""

    __slots__ = ("count", "first", "source")

    first: int
    count: int
    source: str

    def __init__(self, first: int, count: int, source: str = "the default") -> None:
        self._assign(locals())

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.first <= value <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def _parse(text: str, source: str) -> IdRange:
    first_s, sep, count_s = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError
        first, count = int(first_s), int(count_s)
    except ValueError:
        raise ConfinementError(
            _STEP, f"{source}: {text!r} is not FIRST:COUNT (e.g. 2000000000:65536)"
        ) from None
    return IdRange(first, count, source)


def _subid_entries(path: str) -> Iterator[tuple[str, int, int]]:
    """(name, first, count) of each well-formed line of an /etc/subuid-style file (none if it is missing)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            yield parts[0], int(parts[1]), int(parts[2])


def _account_ids(path: str) -> Iterator[tuple[str, int]]:
    """(name, id) of each entry of /etc/passwd or /etc/group (the third field)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            yield parts[0], int(parts[2])


def configured_range(environ: Mapping[str, str] | None = None, *, etc: str = "/etc") -> IdRange:
    """The range privsep's root brokers take ids from here (not yet checked: :func:`check_range`)."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR)
    if value:
        return _parse(value, ENV_VAR)
    found = {
        name: [(first, count) for who, first, count in _subid_entries(f"{etc}/{name}") if who == SUBID_NAME]
        for name in ("subuid", "subgid")
    }
    if found["subuid"] or found["subgid"]:
        if len(found["subuid"]) != 1 or found["subuid"] != found["subgid"]:
            raise ConfinementError(
                _STEP,
                f"{etc}/subuid and {etc}/subgid must hold one and the same '{SUBID_NAME}' entry "
                f"(they hold {found['subuid'] or 'none'} and {found['subgid'] or 'none'}): privsep uses "
                "each id as both the uid and the gid of a sandbox",
            )
        first, count = found["subuid"][0]
        return IdRange(first, count, f"{etc}/subuid and {etc}/subgid")
    return IdRange(DEFAULT_FIRST, DEFAULT_COUNT)


def check_range(ids: IdRange, *, etc: str = "/etc") -> None:
    """Refuse (ConfinementError) a range that is out of bounds or holds an id someone else has."""
    where = f"privsep's host id range {ids} ({ids.source})"
    if ids.count < 1 or ids.first < MIN_FIRST or ids.last > MAX_LAST:
        raise ConfinementError(
            _STEP,
            f"{where} must hold at least one id and lie within {MIN_FIRST}-{MAX_LAST} (16-bit ids, "
            f"nobody among them, are below; ids tools read as negative above); {_HOW}",
        )
    for kind, path in (("user", f"{etc}/passwd"), ("group", f"{etc}/group")):
        for name, value in _account_ids(path):
            if value in ids:
                raise ConfinementError(
                    _STEP,
                    f"{where} holds {value}, the id of the {kind} {name!r} in {path}: a sandbox would own "
                    f"that account's files and could signal its processes; {_HOW} to a range no account uses",
                )
    for kind in ("subuid", "subgid"):
        for name, first, count in _subid_entries(f"{etc}/{kind}"):
            if name != SUBID_NAME and count > 0 and first <= ids.last and ids.first <= first + count - 1:
                raise ConfinementError(
                    _STEP,
                    f"{where} overlaps the subordinate ids {first}-{first + count - 1} that {etc}/{kind} "
                    f"gives {name!r} (their containers run as those ids); {_HOW} to a range no one else has",
                )


@cached
def _checked_range(value: str | None, etc: str) -> IdRange:
    ids = configured_range({} if value is None else {ENV_VAR: value}, etc=etc)
    check_range(ids, etc=etc)
    return ids


def current_range() -> IdRange:
    """The configured range, checked (once per process and setting: it reads four small files)."""
    return _checked_range(os.environ.get(ENV_VAR) or None, "/etc")


class Claim:
    """One id held for one live sandbox: its lock file, open and flock'ed until :meth:`release`."""

    def __init__(self, value: int, fd: int, path: str) -> None:
        self.id = value
        self._fd = fd
        self._path = path

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Free the id (idempotent). Unlinked while still locked, so no claimant takes over a
        file that is about to go; a claimant that opened it just before sees it unlinked."""
        if self._fd < 0:
            return
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"Claim({self.id}, {'held' if self.held else 'released'})"


def _open_lock_dir(lock_dir: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(lock_dir, flags)
    except FileNotFoundError:
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        fd = os.open(lock_dir, flags)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise ConfinementError(
            _STEP,
            f"{lock_dir} belongs to uid {st.st_uid} with mode {st.st_mode & 0o7777:o}: only privsep "
            "(root) may write there, or one could claim or free another's id; remove it and privsep "
            "recreates it",
        )
    return fd


def _take(dir_fd: int, value: int) -> int | None:
    """The locked fd of ``value``'s lock file, or None when a live sandbox holds it."""
    name = str(value)
    for _ in range(3):  # each retry follows a release that raced with us
        try:
            fd = os.open(
                name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
            )
        except FileExistsError:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # held; or created an instant ago by a claimant another one beat to the lock
            return None
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # its holder released it between our open and our lock
            continue
        return fd
    return None


def claim(ids: IdRange | None = None, *, lock_dir: str = LOCK_DIR) -> Claim:
    """Claim a free id of ``ids`` (default: :func:`current_range`) for one sandbox."""
    ids = current_range() if ids is None else ids
    try:
        dir_fd = _open_lock_dir(lock_dir)
        try:
            draw = int.from_bytes(os.urandom(4), "little")
            if draw % _SWEEP_ONE_IN == 0:
                _sweep(dir_fd, ids)
            start = (draw // _SWEEP_ONE_IN) % ids.count
            for i in range(ids.count):
                value = ids.first + (start + i) % ids.count
                fd = _take(dir_fd, value)
                if fd is not None:
                    return Claim(value, fd, f"{lock_dir}/{value}")
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfinementError(_STEP, f"claiming a host id in {lock_dir}: {exc.strerror}") from None
    raise ConfinementError(
        _STEP,
        f"every id of privsep's range {ids} ({ids.source}) is held by a live sandbox; end some, or {_HOW} "
        "to a wider range",
    )


def _sweep(dir_fd: int, ids: IdRange) -> int:
    removed = 0
    for name in os.listdir(dir_fd):
        if not name.isdigit() or int(name) not in ids:
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink:
                # Still locked by us: a claimant that opened it meanwhile finds it unlinked, and retries.
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
        except BlockingIOError:
            pass  # a live sandbox's
        finally:
            os.close(fd)
    return removed


def sweep(ids: IdRange | None = None, *, lock_dir: str = LOCK_DIR) -> int:
    """Remove the lock files of ``ids`` that killed brokers left (free ids); how many went."""
    ids = current_range() if ids is None else ids
    try:
        dir_fd = _open_lock_dir(lock_dir)
        try:
            return _sweep(dir_fd, ids)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfinementError(_STEP, f"sweeping {lock_dir}: {exc.strerror}") from None


def census(ids: IdRange, *, lock_dir: str = LOCK_DIR) -> tuple[int, int]:
    """(claimed, stale): ids of ``ids`` that live sandboxes hold, and lock files that killed brokers
    left behind (free ids, reused when picked). Probing takes each free lock for an instant."""
    try:
        names = os.listdir(lock_dir)
    except FileNotFoundError:
        return 0, 0
    claimed = stale = 0
    for name in names:
        if not name.isdigit() or int(name) not in ids:
            continue
        try:
            fd = os.open(f"{lock_dir}/{name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            claimed += 1
        else:
            stale += 1
        finally:
            os.close(fd)
    return claimed, stale
