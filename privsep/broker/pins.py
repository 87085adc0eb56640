"""The broker's pinned grants: each ``[[files]]`` grant held open from the sandbox's start.

Every brokered file operation resolves beneath one of these ``O_PATH`` fds
(``files.py``), so what a grant names is fixed when the broker starts, not
when the first request comes: a directory the child renames away and
replaces with a symlink afterwards (through a writable grant of its own)
does not move the grant. Pinning therefore happens at start even where the
policy's model is built only on the first request (``LazyServices``): it
needs no more than each grant's index, path and whether it writes
(:func:`pin_specs`), which ``privsep run``'s plan cache keeps.
"""

from __future__ import annotations

import os
import stat

from privsep._lazy import lazy_module
from privsep._record import Record, replace
from privsep.errors import PolicyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from privsep.broker import readonly
    from privsep.policy.model import Policy
else:
    readonly = lazy_module("privsep.broker.readonly", globals())  # only for a read grant

__all__ = ["Pin", "PinSpec", "Pins", "pin", "pin_specs"]

#: One grant to pin: its index in the policy's ``[[files]]``, its path, and whether it writes.
PinSpec = tuple[int, str, bool]


class Pin(Record):
    """A granted path held open: a directory, or the parent of an exact file grant."""

    __slots__ = ("fd", "name", "owner")
    fd: int
    name: str | None  # None: the grant is this directory; else the file's name in it
    owner: tuple[int, int]
    """A root broker acts beneath the grant as its owner would (uid, gid of the granted path, or of
    its directory while it does not exist), as the idmapped bind of a kernel-served grant does:
    what it creates is the owner's, and it opens only what the owner's permissions allow."""

    def __init__(self, fd: int, name: str | None, owner: tuple[int, int] = (-1, -1)) -> None:
        self._assign(locals())


def pin_specs(policy: Policy) -> tuple[PinSpec, ...]:
    """What :class:`Pins` holds for ``policy``: every grant that is not a deny rule."""
    from privsep.policy.serving import writes  # noqa: PLC0415 - the model's module: pydantic

    return tuple((index, rule.path, writes(rule)) for index, rule in enumerate(policy.files) if not rule.deny)


class Pins:
    """The pinned grants of one policy, by index; owns their fds."""

    def __init__(self, specs: Iterable[PinSpec]) -> None:
        self.by_index: dict[int, Pin] = {}
        try:
            for index, path, writes in specs:
                held = pin(index, path)
                if os.geteuid() == 0:
                    held = replace(held, owner=_owner(path))
                self.by_index[index] = held if writes else _read_only(index, path, held)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for pin in self.by_index.values():
            os.close(pin.fd)
        self.by_index.clear()


def pin(index: int, path: str) -> Pin:
    """``path``, the grant ``files[index]``, held open (``privsep policy check`` tries each alone)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except OSError as exc:
        raise PolicyError(f"files[{index}] ({path}): cannot open it: {exc.strerror}") from None
    if fd >= 0:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return Pin(fd, None)
        os.close(fd)
    # An exact file grant (it may not exist yet): pin its directory.
    parent, name = os.path.split(path)
    try:
        return Pin(os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), name)
    except OSError as exc:
        raise PolicyError(
            f"files[{index}] ({path}): neither it nor its directory can be opened "
            f"({exc.strerror}); create {parent} first, or fix the path"
        ) from None


def _read_only(index: int, path: str, pin: Pin) -> Pin:
    """``pin`` beneath a read-only view (readonly.py): fds handed out cannot change metadata."""
    where = path if pin.name is None else os.path.dirname(path)
    try:
        fd = readonly.readonly_clone(where)
    except OSError as exc:
        os.close(pin.fd)
        raise PolicyError(
            f"files[{index}] ({path}): cannot make the read-only view the broker opens read grants "
            f"through ({exc.strerror}); without it a handed-out fd could change the file's mode "
            "or times (run `privsep doctor`)"
        ) from None
    os.close(pin.fd)
    return Pin(fd, pin.name, pin.owner)


def _owner(path: str) -> tuple[int, int]:
    """Who owns a granted path: itself, or the nearest directory above it that exists."""
    at = path
    while True:
        try:
            st = os.stat(at)
            return st.st_uid, st.st_gid
        except OSError:
            if at == "/":
                return 0, 0
            at = os.path.dirname(at)
