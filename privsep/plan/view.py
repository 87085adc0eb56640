"""The child's own filesystem, planned: what the sandbox's pid 1 will build (confine/view.py).

The child does not see the host's tree with some parts forbidden; it sees a
new, read-only tmpfs root holding only what the policy grants, bound at the
same paths. That is why the interpreter can live under /root (mode 0700):
the directories leading to a granted path are fresh 0755 directories of the
view, not the host's.

Planning reads host metadata (lstat, readlink) in the broker, before any
fork, so a missing path is reported early and the fork path stays small.
Symlinks on the way to a grant are mirrored as symlinks (``/lib`` ->
``usr/lib`` on merged-/usr systems) and their targets granted too. The plan
is data only; building it (:func:`privsep.confine.view.build_view`) runs in
the sandbox's pid 1, the only process that can mount a ``/proc`` for the new
pid namespace.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from privsep import _hostfacts as host
from privsep import _linux
from privsep._record import Record, replace
from privsep.errors import PolicyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    # Planning reads the policy's model; the plan's own types (what the sandbox builds, what the
    # plan cache of privsep run reads back) do not, and must not import pydantic.
    from typing import Any

    from privsep.policy.model import Policy, View

#: Device nodes every child gets; none of them gives access to anything.
DEVICES = ("null", "zero", "full", "random", "urandom")
_MAX_LINKS = 40


class Bind(Record):
    """A host path bound at the same path in the view."""

    __slots__ = ("access", "idmap", "is_dir", "path", "writable")

    path: str
    is_dir: bool
    access: tuple[str, ...]
    """The granted access words of a kernel-served ``[[files]]`` grant; () for a ``[view]`` read."""
    writable: bool
    """Bound read-write (a grant that writes); every other bind is read-only."""
    idmap: tuple[int, int] | None
    """Root broker: the host (uid, gid) that own the grant, shown to the child as its own
    through an idmapped mount (mapped onto the sandbox's host id), so it may do there what
    the grant says, and files it creates land owned by them. None: a plain bind, the
    host's ownership as it is."""

    def __init__(
        self,
        path: str,
        is_dir: bool,
        access: tuple[str, ...] = (),
        writable: bool = False,
        idmap: tuple[int, int] | None = None,
    ) -> None:
        self._assign(locals())


class Mask(Record):
    """A deny rule inside a bind: an empty, read-only, mode-0 file or directory mounted over it."""

    __slots__ = ("is_dir", "path")
    path: str
    is_dir: bool

    def __init__(self, path: str, is_dir: bool) -> None:
        self._assign(locals())


class ViewPlan(Record):
    """What to build; paths are absolute, the same inside and outside."""

    __slots__ = ("binds", "dirs", "files", "frozen", "masks", "overlays", "pins", "symlinks", "tmp_size_mb")

    dirs: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]
    binds: tuple[Bind, ...]
    tmp_size_mb: int | None
    pins: tuple[str, ...]
    """Directories inside a writable grant bound onto themselves: the ancestors of a mask,
    which then cannot be renamed or exchanged away (EBUSY), so the mask keeps its path."""
    masks: tuple[Mask, ...]
    files: tuple[tuple[str, str], ...]
    """Small generated files (path, content): /etc/passwd and friends, when the view has none."""
    frozen: tuple[tuple[str, int, int], ...]
    """Set-id or file-capability files, and files with other names, inside a writable grant,
    bound read-only onto themselves: (path, st_dev, st_ino) as planning found each. As their
    owner the child could otherwise rewrite a privileged program (a write through mmap keeps
    the set-id bit and the capabilities), or change a file under its names outside the grant.
    Init binds only the very file planning found (confine/view.py: fresh-eyes audit 17)."""
    overlays: tuple[tuple[str, str], ...]
    """Generated files (path, content) mounted read-only over an entry a bind shows (a symlink
    included): the sandbox's /etc/resolv.conf when the view shows the host's /etc (plan/egress.py)."""

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced took them
        self,
        dirs: tuple[str, ...],
        symlinks: tuple[tuple[str, str], ...],
        binds: tuple[Bind, ...],
        tmp_size_mb: int | None,
        pins: tuple[str, ...] = (),
        masks: tuple[Mask, ...] = (),
        files: tuple[tuple[str, str], ...] = (),
        frozen: tuple[tuple[str, int, int], ...] = (),
        overlays: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._assign(locals())


class GrantsPlan(Record):
    """A policy's view and ``[[files]]`` grants, resolved against this host."""

    __slots__ = ("broker_served", "kernel_served", "view")

    view: ViewPlan
    kernel_served: tuple[int, ...]
    """Indices into ``policy.files`` of the grants the kernel serves (bound into the view)."""
    broker_served: tuple[tuple[int, str], ...]
    """The other grants, each with why the broker serves it."""

    def __init__(
        self, view: ViewPlan, kernel_served: tuple[int, ...], broker_served: tuple[tuple[int, str], ...]
    ) -> None:
        self._assign(locals())


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Planner:
    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.symlinks: dict[str, str] = {}
        self.binds: dict[str, bool] = {}

    def add(self, path: str, *, required: bool, links: int = 0) -> str | None:
        """Plan ``path`` into the view; the resolved path bound, or None when it is missing."""
        if links > _MAX_LINKS:
            raise PolicyError(f"view path {path}: too many levels of symbolic links")
        path = posixpath.normpath(path)
        parts = [p for p in path.split("/") if p]
        current = "/"
        for i, part in enumerate(parts):
            nxt = posixpath.join(current, part)
            try:
                st = host.lstat(nxt)
            except FileNotFoundError:
                if required:
                    raise PolicyError(
                        f"view path {path} does not exist on this machine ({nxt} is missing); "
                        "remove it from [view] read, or move it to read_if_exists"
                    ) from None
                return None
            except OSError as exc:
                raise PolicyError(f"view path {path}: cannot inspect {nxt}: {exc.strerror}") from None
            rest = parts[i + 1 :]
            if stat.S_ISLNK(st.st_mode):
                target = host.readlink(nxt)
                self.symlinks[nxt] = target
                resolved = posixpath.normpath(posixpath.join(current, target))
                return self.add(posixpath.join(resolved, *rest), required=required, links=links + 1)
            if not rest:
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    raise PolicyError(f"view path {path} is neither a directory nor a regular file")
                self.binds[nxt] = stat.S_ISDIR(st.st_mode)
                return nxt
            if not stat.S_ISDIR(st.st_mode):
                raise PolicyError(f"view path {path}: {nxt} is not a directory")
            self.dirs.add(nxt)
            current = nxt
        return "/"

    def plan(self, tmp_size_mb: int | None, grants: dict[str, Bind]) -> ViewPlan:
        # A [view] read inside another [view] read is already visible through it;
        # a grant is always bound, since its access differs from what encloses it.
        view_dirs = [p for p, is_dir in self.binds.items() if is_dir and p not in grants]
        all_dirs = [p for p, is_dir in self.binds.items() if is_dir]

        def inside(path: str, dirs: list[str]) -> bool:
            return any(_under(path, d) and path != d for d in dirs)

        binds = tuple(
            grants.get(p, Bind(p, is_dir))
            for p, is_dir in sorted(self.binds.items())
            if p in grants or not inside(p, view_dirs)
        )
        for b in binds:
            if b.path == "/":
                raise PolicyError("the view cannot bind / itself: grant the directories the program needs")
            for r in ("/proc", "/dev"):
                if _under(b.path, r) or _under(r, b.path):
                    raise PolicyError(
                        f"view path {b.path} overlaps {r}, which privsep builds itself; remove it from [view]"
                    )
            # A grant below /tmp (a venv there, say) is bound inside the private
            # /tmp; only "/" could contain /tmp, and it contains /proc too.
        bound = {b.path for b in binds}
        # Nothing is ever created inside a bind: it would land on the host.
        dirs = tuple(sorted(d for d in self.dirs if not inside(d, all_dirs) and d not in bound))
        symlinks = tuple(sorted((p, t) for p, t in self.symlinks.items() if not inside(p, all_dirs)))
        return ViewPlan(dirs=dirs, symlinks=symlinks, binds=binds, tmp_size_mb=tmp_size_mb)


def plan_view(view: View) -> ViewPlan:
    """Resolve the policy's view against this host (in the broker, before fork)."""
    planner = _Planner()
    for path in view.read:
        planner.add(path, required=True)
    for path in view.read_if_exists:
        planner.add(path, required=False)
    return planner.plan(view.tmp_size_mb if view.tmp else None, {})


def _granted_words(access: tuple[str, ...]) -> frozenset[str]:
    words = frozenset(access)
    return words | {"append"} if "write" in words else words


def plan_grants(policy: Policy, *, root_broker: bool, sandbox_id: int) -> GrantsPlan:
    """The view with every kernel-servable ``[[files]]`` grant bound in it and every deny masked.

    ``sandbox_id`` is the id the child sees itself as (in the generated /etc/passwd).
    With a root broker every grant is idmapped from its owner: the sandbox's host id is
    claimed only when it is spawned, and belongs to no file's owner.

    Runs in the broker before fork; reads host metadata only. Raises
    PolicyError when a grant cannot mean what it says (see :func:`_check_nesting`)
    or a deny rule cannot be masked.
    """
    from privsep.policy.decide import deciding_rule  # noqa: PLC0415 - see TYPE_CHECKING above
    from privsep.policy.serving import broker_reason, writes  # noqa: PLC0415

    planner = _Planner()
    for path in policy.view.read:
        planner.add(path, required=True)
    for path in policy.view.read_if_exists:
        planner.add(path, required=False)
    grants: dict[str, Bind] = {}
    kernel: list[int] = []
    broker: list[tuple[int, str]] = []
    for index, rule in enumerate(policy.files):
        if rule.deny:
            continue
        if deciding_rule(policy, rule.path) != index and _denied_at(policy, rule.path):
            broker.append((index, "a deny rule covers it"))
            continue
        try:
            st = host.stat(rule.path)
        except OSError:
            broker.append((index, "the path does not exist yet, and only an existing path can be bound"))
            continue
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            broker.append((index, "it is neither a directory nor a regular file"))
            continue
        reason = broker_reason(rule, is_dir=stat.S_ISDIR(st.st_mode))
        if reason is not None:
            broker.append((index, reason))
            continue
        resolved = planner.add(rule.path, required=False)
        if resolved is None:
            broker.append((index, "the path does not exist yet, and only an existing path can be bound"))
            continue
        if resolved in grants:  # the same path granted twice: the first rule decides, as in match
            kernel.append(index)
            continue
        idmap = (st.st_uid, st.st_gid) if root_broker else None
        grants[resolved] = Bind(
            resolved,
            stat.S_ISDIR(st.st_mode),
            access=tuple(a.value for a in rule.access),
            writable=writes(rule),
            idmap=idmap,
        )
        kernel.append(index)
    plan = planner.plan(policy.view.tmp_size_mb if policy.view.tmp else None, grants)
    writable = [policy.files[i].path for i in kernel if writes(policy.files[i])]
    writable += [b.path for b in plan.binds if b.writable]
    _check_links(policy, writable)
    _check_nesting(policy, plan, kernel)
    _check_broker_nesting(policy, plan, broker)
    pins, masks = _masks(policy, plan.binds, writable)
    served_pins, served_masks = _broker_served_masks(policy, plan.binds, broker)
    found, frozen = _scan(plan.binds)
    pins = tuple(sorted(set(pins) | set(served_pins) | set(_nested_pins(plan.binds))))
    masks = tuple(sorted({m.path: m for m in (*masks, *served_masks, *found)}.values(), key=lambda m: m.path))
    files = _generated_files(plan, sandbox_id, home="/tmp" if policy.view.tmp else "/")
    plan = replace(plan, pins=pins, masks=masks, files=files, frozen=frozen)
    return GrantsPlan(view=plan, kernel_served=tuple(kernel), broker_served=tuple(broker))


def _link_inside(path: str, writable: list[str]) -> str | None:
    """The first symlink on ``path`` that lies inside a writable grant (the child may have planted it)."""
    at = "/"
    for part in [p for p in path.split("/") if p]:
        at = posixpath.join(at, part)
        try:
            is_link = stat.S_ISLNK(host.lstat(at).st_mode)
        except OSError:
            return None
        if is_link and any(_under(at, w) and at != w for w in writable):
            return at
    return None


def _check_links(policy: Policy, writable: list[str]) -> None:
    """Refuse a path that runs through a symlink inside a writable grant.

    The sandbox writes there: a symlink it planted (say, a directory renamed
    away and a link to /etc put in its place) would make the next run bind,
    mask or read whatever the link names. Such a path must be written as its
    real path.
    """
    named = [(rule.describe(i), rule.path) for i, rule in enumerate(policy.files)]
    named += [(f"[view] read {p}", p) for p in (*policy.view.read, *policy.view.read_if_exists)]
    for what, path in named:
        link = _link_inside(path, writable)
        if link is not None:
            raise PolicyError(
                f"{what}: its path runs through the symbolic link {link}, inside a writable grant, "
                "where the sandbox could have planted it; write the real path "
                f"({os.path.realpath(path)}) if that is what you mean"
            )


def _check_broker_nesting(policy: Policy, plan: ViewPlan, broker: list[tuple[int, str]]) -> None:
    """A broker-served grant inside a writable kernel-served one would be served by the kernel.

    The outer bind already lets the kernel write, link, rename and remove
    everything beneath it; only opens of the exact inner path reach the broker.
    An inner grant that means less than that (append-only, read-only...) is refused.
    """
    for index, _reason in broker:
        rule = policy.files[index]
        wanted = _granted_words(tuple(a.value for a in rule.access))
        for b in plan.binds:
            if b.writable and _under(rule.path, b.path) and rule.path != b.path:
                extra = _granted_words(b.access) - wanted
                if extra:
                    raise PolicyError(
                        f"{rule.describe(index)} is served by the broker ({_reason}) but lies inside the "
                        f"writable grant of {b.path}, which the kernel serves and which gives "
                        f"{', '.join(sorted(extra))} there too; move it out, or serve the enclosing grant "
                        'with serve = "broker" as well'
                    )


def _broker_served_masks(
    policy: Policy, binds: tuple[Bind, ...], broker: list[tuple[int, str]]
) -> tuple[list[str], list[Mask]]:
    """Masks over broker-served grants that lie inside a kernel-served bind.

    The bind shows the inner path too, so without a mask the kernel would serve it
    under the outer grant's rights to any name that reaches it other than the exact
    one the broker decides (``/proc/self/root/...``, a symlink in ``/tmp``): an
    append-only log inside a read grant would be readable, and a ``serve = "broker"``
    rule would lose its per-open audit. Masked, only the broker serves it. In a
    writable bind the ancestors are pinned, as for a deny mask.
    """

    pins: list[str] = []
    masks: list[Mask] = []
    bound = {b.path for b in binds}
    for index, _reason in broker:
        rule = policy.files[index]
        covering = [b for b in binds if b.is_dir and _under(rule.path, b.path) and rule.path != b.path]
        if not covering:
            continue
        enclosing = max(covering, key=lambda b: len(b.path))
        try:
            st = host.lstat(rule.path)
        except FileNotFoundError:
            if "read" in enclosing.access and "read" not in rule.access:
                raise PolicyError(
                    f"{rule.describe(index)} is served by the broker inside the kernel-served grant of "
                    f"{enclosing.path}, which gives read there; it does not exist yet, and only an "
                    f"existing path can be masked: create it before the run (touch {rule.path}), "
                    "or move it out of that grant"
                ) from None
            continue  # nothing there to serve under the outer rights
        except OSError as exc:
            raise PolicyError(f"{rule.describe(index)}: cannot inspect it: {exc.strerror}") from None
        masks.append(Mask(rule.path, stat.S_ISDIR(st.st_mode)))
        if enclosing.writable:
            at = posixpath.dirname(rule.path)
            while _under(at, enclosing.path) and at != enclosing.path:
                if at not in bound:
                    pins.append(at)
                at = posixpath.dirname(at)
    return pins, masks


def _nested_pins(binds: tuple[Bind, ...]) -> list[str]:
    """Directories between a writable bind and a bind inside it, pinned (bound onto themselves).

    Otherwise the child could rename an ancestor of the inner grant away and put
    a directory of its own at the inner grant's host path.
    """
    bound = {b.path for b in binds}
    pins: list[str] = []
    for outer in (b for b in binds if b.writable and b.is_dir):
        for inner in binds:
            if inner.path == outer.path or not _under(inner.path, outer.path):
                continue
            at = posixpath.dirname(inner.path)
            while _under(at, outer.path) and at != outer.path:
                if at not in bound:
                    pins.append(at)
                at = posixpath.dirname(at)
    return pins


#: How many entries of the grants privsep checks at start before it gives up (fails closed).
MAX_SCANNED = 200_000
#: How many files of the writable grants privsep binds read-only onto themselves (each is a
#: mount in the sandbox's view) before it refuses the grants instead.
MAX_FROZEN = 1_000


def _has_file_caps(path: str) -> bool:
    try:
        os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return False
    return True


#: The longest path of an entry privsep will mount over (a mask, a frozen file): init opens it
#: by its path beneath its new root (openat2), and the kernel takes no path of PATH_MAX (4096).
_MAX_MOUNT_PATH = 4000
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _unlistable(path: str, exc: OSError) -> PolicyError:
    # A directory the broker cannot list may still be searchable by name (mode --x),
    # and the child may be the broker's own uid: fail closed rather than leave it unseen.
    return PolicyError(
        f"cannot list {path[:200]} inside a grant ({exc.strerror}), so privsep cannot check it "
        "for sockets, FIFOs and set-id programs; make it listable by the broker, or grant "
        "narrower directories"
    )


def _listed(fd: int, path: str) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(fd))
    except OSError as exc:
        raise _unlistable(path, exc) from None


class _Moved(Exception):
    """A directory of a writable grant was moved or replaced while the walk looked at it (see
    :func:`_walk`); ``args[0]``: its path."""


#: Walks of a writable grant tried before a tree that keeps moving under them refuses it.
_WALKS = 3


def _walked(fd: int, looked: os.stat_result | None, seen: set[tuple[int, int, int]]) -> bool:
    """False for a directory that is not the one the walk looked at, or that it has walked
    already through the same mount (a bind shows it again through another: that is walked
    again): what the grant holds was moved while privsep checked it (a sandbox running with the
    same grant, renaming directories: fresh-eyes audits 17 and 18)."""
    st = os.fstat(fd)
    identity = (st.st_dev, st.st_ino, _linux.mount_id(fd))
    if (looked is not None and (st.st_dev, st.st_ino) != (looked.st_dev, looked.st_ino)) or identity in seen:
        return False
    seen.add(identity)
    return True


def _walk(root: str, strict: bool) -> Iterator[tuple[str, os.stat_result, str]]:
    """(path, lstat, a short name of it) of every entry below ``root``, mounts below it included,
    links not followed.

    Directory by directory through fds, never by the entry's whole path: a sandbox that moved a
    directory of its grant down a chain of long names (more than PATH_MAX bytes) made its lstat
    fail, and the walk skipped it and all beneath it, frozen files and sockets included
    (fresh-eyes audit 16). The short name (``/proc/self/fd/N/NAME``) is valid while the entry
    is the one yielded. An entry that cannot be looked at, or a directory that cannot be
    opened or listed, fails the walk (PolicyError); one removed since its listing is skipped.
    One fd is held per level of the current path (a chain deeper than the fd limit fails).

    ``strict`` (a writable grant, whose frozen files must all be found): a directory moved,
    replaced or met twice while the walk looks fails it too. Otherwise (a read grant: no frozen
    files, and the broker connects nothing on a read-only mount) such a directory is skipped, as
    one removed is, so that a host process that keeps changing a read grant does not stop the
    sandbox from starting; a datagram socket in it then goes unmasked, as one made after the
    start does (SECURITY.md, known limits: unix datagrams are not brokered)."""
    frames: list[tuple[int, str, list[os.DirEntry[str]]]] = []
    seen: set[tuple[int, int, int]] = set()  # directories walked: one met twice was moved meanwhile
    try:
        try:
            top = os.open(root, _DIRECTORY)
        except OSError as exc:
            raise _unlistable(root, exc) from None
        _walked(top, None, seen)  # the first: nothing to differ from
        frames.append((top, root, _listed(top, root)))
        while frames:
            fd, path, entries = frames[-1]
            if not entries:
                os.close(fd)
                frames.pop()
                continue
            name = entries.pop().name
            full = path.rstrip("/") + "/" + name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing: nothing there to expose
            except OSError as exc:
                raise PolicyError(
                    f"cannot look at {full[:200]} inside a grant ({exc.strerror}), so privsep cannot "
                    "check it for sockets, FIFOs and set-id programs; grant narrower directories"
                ) from None
            yield full, st, f"/proc/self/fd/{fd}/{name}"
            if stat.S_ISDIR(st.st_mode):  # mounts below are bound too (recursive binds)
                try:
                    sub = os.open(name, _DIRECTORY, dir_fd=fd)
                except FileNotFoundError:
                    continue  # removed since it was looked at (a busy build directory)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise _unlistable(full, exc) from None
                    if strict:  # replaced by a file or a link: moved
                        raise _Moved(full) from None
                    continue
                frames.append((sub, full, []))  # held before it is listed: closed if that fails
                if not _walked(sub, st, seen):
                    if strict:
                        raise _Moved(full)
                    os.close(frames.pop()[0])
                    continue
                frames[-1] = (sub, full, _listed(sub, full))
    finally:
        for fd, _, _ in frames:
            os.close(fd)


def _contents(path: str, is_dir: bool, privileged: bool, budget: int) -> list[Any]:
    """[entries counted, sockets and FIFOs, privileged files] of one grant (see :func:`_scan`).

    Stops counting past ``budget`` entries. A host fact (``hostfacts``): a cached plan
    holds only while every grant's answer is still the same. A writable grant whose tree moved
    under the walk is walked again, :data:`_WALKS` times at most, then refused.
    """
    for attempt in range(1, _WALKS + 1):
        try:
            return _walk_once(path, is_dir, privileged, budget)
        except _Moved as moved:
            if attempt == _WALKS:
                raise PolicyError(
                    f"{str(moved.args[0])[:200]} was moved or replaced each of the {_WALKS} times "
                    "privsep checked the writable grant that holds it; something else keeps changing "
                    "it, perhaps another sandbox with the same grant: start again when it is done, or "
                    "give each sandbox a directory of its own"
                ) from None
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises


def _walk_once(path: str, is_dir: bool, privileged: bool, budget: int) -> list[Any]:
    special: list[str] = []
    frozen: list[Any] = []  # [path, st_dev, st_ino], as JSON keeps a host fact
    count = 0
    entries = _walk(path, privileged) if is_dir else iter([(path, os.lstat(path), path)])
    for entry, st, short in entries:
        count += 1
        if count > budget:
            break
        mode = st.st_mode
        fact: Any
        if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
            found, fact = special, entry
        elif (
            privileged
            and stat.S_ISREG(mode)
            and (st.st_nlink > 1 or mode & _linux.SETID_BITS or _has_file_caps(short))
        ):
            found, fact = frozen, [entry, st.st_dev, st.st_ino]
        else:
            continue
        if len(os.fsencode(entry)) > _MAX_MOUNT_PATH:
            raise PolicyError(
                f"{entry[:200]}... lies too deep in a grant ({len(os.fsencode(entry))} bytes) for "
                "privsep to mount over it, and it is a socket, a FIFO, a set-id file or a file with "
                "other names, which must be masked or bound read-only; move it, or grant narrower "
                "directories"
            )
        found.append(fact)
    return [count, special, frozen]


host.register("grant", _contents)


def _scan(binds: tuple[Bind, ...]) -> tuple[list[Mask], tuple[tuple[str, int, int], ...]]:
    """What a grant must not expose as it is: sockets, FIFOs, and privileged programs.

    - A unix socket or a FIFO inside any grant is masked: neither a read-only
      mount nor Landlock governs connecting to a socket, and an enclosing grant's
      rights reach a FIFO below a read-only one. (Ones created on the host after
      the start are not: SECURITY.md, known limits.)
    - In any writable grant, a set-id file or one with file capabilities (executable
      or not: its owner can chmod it) is bound read-only onto itself (``frozen``):
      the child may be its owner there, and a write through a shared mmap keeps
      the set-id bit and the capabilities.
    - So is a file with other names (hard links, ``st_nlink`` > 1): a write through the
      granted name changes the file under every name, and a package manager's cache shares
      its files with the environments it installed (uv's and pnpm's by default, conda's):
      granted ``~/.cache/uv``, a sandbox rewrote the broker's own modules (fresh-eyes
      audit 15). A link cannot be made from a frozen file into the grant (another mount).
      More than :data:`MAX_FROZEN` such files and the grants are refused.
    """
    masks: list[Mask] = []
    frozen: list[tuple[str, int, int]] = []
    seen = 0
    for b in binds:
        if not b.access:
            continue  # [view] reads: the policy author's own choice of system paths
        # The child owns what the grant's owner owns (idmapped, or the broker's own uid without
        # root): in any writable grant it could rewrite a set-id or capability file in place.
        count, special, privileged = host.observe("grant", b.path, b.is_dir, b.writable, MAX_SCANNED - seen)
        seen += count
        if seen > MAX_SCANNED:
            raise PolicyError(
                f"the grants hold more than {MAX_SCANNED} entries ({b.path} and the rest), and "
                "privsep checks each at start for sockets, FIFOs and set-id programs; grant "
                'narrower directories, or serve this one with serve = "broker"'
            )
        masks += [Mask(path, is_dir=False) for path in special]
        frozen += [(path, dev, ino) for path, dev, ino in privileged]
        if len(frozen) > MAX_FROZEN:
            raise PolicyError(
                f"the writable grants hold more than {MAX_FROZEN} files that have other names too "
                f"(hard links, as a package cache's; {b.path} among them) or are set-id: a write to "
                "one would change it under every name, so privsep binds each read-only, and this "
                "many would be as many mounts; grant narrower directories, break the links "
                "(copy the files), or grant the directory read-only"
            )
    return masks, tuple(sorted(frozen))


def _denied_at(policy: Policy, path: str) -> bool:
    from privsep.policy.decide import deciding_rule  # noqa: PLC0415 - see TYPE_CHECKING above

    index = deciding_rule(policy, path)
    return index is not None and policy.files[index].deny


_ALL_WORDS = frozenset({"read", "list", "write", "create", "truncate", "append"})


def _check_nesting(policy: Policy, plan: ViewPlan, kernel: list[int]) -> None:
    """A grant inside another must not gain access through it.

    Landlock's rights add up down a hierarchy, and only a read-only mount takes
    away: an inner grant that writes less than what encloses it cannot be
    expressed by the kernel. What encloses a grant: another grant, a ``[view]``
    read (read, list), the private /tmp (everything). Refuse, naming the fix,
    rather than silently granting more than the inner rule says.
    """
    enclosing: list[tuple[str, frozenset[str], str]] = []
    for b in plan.binds:
        words = _granted_words(b.access) if b.access else frozenset({"read", "list"})
        enclosing.append((b.path, words, "an enclosing grant" if b.access else "a [view] read"))
    if plan.tmp_size_mb is not None:
        enclosing.append(("/tmp", _ALL_WORDS, "the private /tmp"))
    for inner in (b for b in plan.binds if b.access):
        wanted = _granted_words(inner.access)
        effective: set[str] = set(wanted)
        sources: list[str] = []
        for path, words, what in enclosing:
            if _under(inner.path, path) and path != inner.path and words - wanted:
                effective |= words
                sources.append(what)
        if not inner.writable:
            effective -= {"write", "create", "truncate", "append"}
        if not inner.is_dir:
            effective -= {"list", "create"}  # directory rights mean nothing on a file
        extra = effective - wanted
        if extra:
            names = [policy.files[i].describe(i) for i in kernel if policy.files[i].path == inner.path]
            fix = 'make the inner grant read-only, give it the same access, or set serve = "broker" on it' + (
                " and on the enclosing grant" if "an enclosing grant" in sources else ""
            )
            if "the private /tmp" in sources:
                fix += " (or turn the private /tmp off: [view] tmp = false)"
            raise PolicyError(
                f"{names[0] if names else inner.path} lies inside {sources[0]}, which also gives "
                f"{', '.join(sorted(extra))}, and the kernel cannot take that away beneath it; {fix}"
            )


def _masks(
    policy: Policy, binds: tuple[Bind, ...], writable: list[str]
) -> tuple[tuple[str, ...], tuple[Mask, ...]]:
    pins: set[str] = set()
    masks: list[Mask] = []
    bound = {b.path for b in binds}
    for index, rule in enumerate(policy.files):
        if not rule.deny:
            continue
        # Binds are at real paths: a deny written through a symlink (outside every writable
        # grant: _check_links refused the others) is masked at the path it names.
        path = host.realpath(rule.path)
        if path != rule.path and not host.lexists(rule.path):
            path = rule.path
        covering = [b for b in binds if b.is_dir and _under(path, b.path)]
        exact = [b for b in binds if b.path == path]
        if not covering and not exact:
            continue  # not in the view: nothing to mask
        enclosing = max(covering, key=lambda b: len(b.path)) if covering else exact[0]
        where = rule.describe(index)
        try:
            st = host.lstat(path)
        except FileNotFoundError:
            if any(b.writable for b in covering):
                raise PolicyError(
                    f"{where} lies inside a writable grant but does not exist, and the kernel can "
                    f"only mask an existing path: create it first (mkdir -p or touch {path}), "
                    'or serve the enclosing grant with serve = "broker"'
                ) from None
            continue  # a read-only view cannot grow it
        except OSError as exc:
            raise PolicyError(f"{where}: cannot inspect it: {exc.strerror}") from None
        if _link_inside(rule.path, writable) is not None:
            raise PolicyError(
                f"{where}: the path runs through a symbolic link inside a writable grant (it is "
                f"{os.path.realpath(rule.path)}); deny the real path"
            )
        masks.append(Mask(path, stat.S_ISDIR(st.st_mode)))
        if enclosing.writable:
            at = posixpath.dirname(path)
            while _under(at, enclosing.path) and at != enclosing.path:
                if at not in bound:
                    pins.add(at)
                at = posixpath.dirname(at)
    return tuple(sorted(pins)), tuple(sorted(masks, key=lambda m: m.path))


def _generated_files(plan: ViewPlan, sandbox_id: int, home: str) -> tuple[tuple[str, str], ...]:
    """/etc/passwd, group, nsswitch.conf and hosts when nothing in the view provides them.

    Programs look themselves up (``id``, ``whoami``, git, ssh, Python's
    ``getpass``) and resolve "localhost"; without these files they fail or
    print errors that have nothing to do with what they were asked to do.
    """

    def visible(path: str) -> bool:
        return any(_under(path, b.path) for b in plan.binds)

    shell = "/usr/sbin/nologin"
    me = f"sandbox:x:{sandbox_id}:{sandbox_id}:privsep sandbox:{home}:{shell}"
    databases = ("passwd", "group", "shadow", "hosts", "services", "protocols")
    content = {
        "/etc/passwd": f"root:x:0:0:root:/root:{shell}\n{me}\n",
        "/etc/group": f"root:x:0:\nsandbox:x:{sandbox_id}:\n",
        "/etc/nsswitch.conf": "".join(f"{name}: files\n" for name in databases),
        "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    }
    return tuple((path, text) for path, text in content.items() if not visible(path))
