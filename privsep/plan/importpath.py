"""Where the broker imports Python from, and the grants that would let a sandbox write there.

The broker is a Python process, and it imports some modules only when it first
needs them: a report, a hint, a failed worker's traceback, the handler of a
first request. Those imports may come while the sandbox runs or after it has
ended. A grant that lets the sandbox write where the broker imports from
therefore hands the sandbox the broker's code: a ``shlex.py`` left in a
directory on ``sys.path`` runs as the broker (root, for a root broker), and so
does anything changed in privsep's own package. ``python -m privsep`` drops
the working directory from ``sys.path`` for that reason; this module refuses
the grants themselves, at planning, for ``privsep run`` and ``Sandbox`` alike.

A grant is refused when it writes (``write``, ``create``, ``append``,
``truncate``) and it is a directory on ``sys.path`` or one of its ancestors,
or it lies inside such a directory under a name the broker could import from
there: a module or package that exists on ``sys.path``, a name of the
standard library, or ``__pycache__``. A grant of a plain data directory beside
a script (``./data`` next to ``host.py``) is not refused.
"""

from __future__ import annotations

import os
import posixpath
import sys

from privsep import _linux
from privsep._mountinfo import unescape
from privsep.errors import PolicyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "WRITES",
    "Mount",
    "check_grants",
    "held_forms",
    "import_dirs",
    "mount_forms",
    "mounts",
    "named_and_real",
    "parse_mountinfo",
    "protect",
    "reach_forms",
    "refuse_unknown_overlays",
    "under",
    "unknown_overlays",
]

#: Access words that let the sandbox change what is at a path.
WRITES = frozenset({"write", "create", "append", "truncate"})


def named_and_real(path: str) -> list[str]:
    """``path`` as named (absolute) and as resolved: a grant over a symlink on the way could
    replace the link, and what is reached through it, after planning."""
    named = os.path.abspath(path)
    real = os.path.realpath(path)
    return [named] if named == real else [named, real]


#: One mount: (mount point, device, root: the path within the device's filesystem mounted
#: there, an overlay's layers: its upper, lower, data and work directories, else (); an overlay's
#: upper directory, where writes through it land, else ""; the mount's id, 0 when not known).
Mount = tuple[str, str, str, tuple[str, ...], str, int]


def mounts() -> list[Mount]:
    """The mounts this process sees, from /proc/self/mountinfo, in its order; [] when it cannot
    be read. Hidden ones included: which mount serves a path is asked of the kernel
    (:func:`mount_forms`), not inferred from the order (audit 15: a staged bind moved over a
    later mount listed it first), and what a hidden mount adds only refuses more."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


def parse_mountinfo(text: str) -> list[Mount]:
    """:func:`mounts` from a mountinfo file's text. Lines end at a newline alone, fields at a
    space alone, as the kernel writes them (``splitlines()`` also broke at a carriage return
    a mount point's path may hold, and dropped that mount: see ``cgroups.parse_mountinfo``)."""
    found: list[Mount] = []
    for line in text.split("\n"):
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:] or not fields[0].isdigit():
            continue
        point, device, root = unescape(fields[4]), fields[2], unescape(fields[3])
        after = fields[fields.index("-", 6) + 1 :]  # filesystem type, source, super options
        layers, upper = _overlay_layers(after[2]) if len(after) >= 3 and after[0] == "overlay" else ((), "")
        found.append((point, device, root, layers, upper, int(fields[0])))
    return found


def _overlay_layers(options: str) -> tuple[tuple[str, ...], str]:
    """An overlay's layers (upper, each lower, each data, work) and its upper directory: writing
    into a layer writes into the merged directory, and writes through the merged directory land
    in the upper one (audits 14 and 15). Each option's value is unescaped (mountinfo's octal)
    before ``lowerdir``'s own escapes are read; ``lowerdir+=``/``datadir+=`` (the new mount
    API) name one layer each. A layer named relative to where the overlay was mounted is kept as
    it is: :func:`unknown_overlays` refuses rather than guess where it lies."""
    layers: list[str] = []
    upper = ""
    for option in options.split(","):
        name, _, value = option.partition("=")
        value = unescape(value)
        if name == "upperdir":
            upper = value
            layers.append(value)
        elif name in ("workdir", "lowerdir+", "datadir+"):
            layers.append(value)
        elif name == "lowerdir":
            layers += _split_layers(value)
    return tuple(layers), upper


def _split_layers(value: str) -> list[str]:
    """``lowerdir``'s layers: separated by ``:``; a backslash makes the character after it (a
    ``:``, a backslash) part of the name, as overlayfs reads it."""
    parts, current, at = [], [], 0
    while at < len(value):
        if value[at] == "\\" and at + 1 < len(value):
            current.append(value[at + 1])
            at += 2
        elif value[at] == ":":
            parts.append("".join(current))
            current = []
            at += 1
        else:
            current.append(value[at])
            at += 1
    parts.append("".join(current))
    return [p for p in parts if p]


def unknown_overlays(protected: Iterable[str], mounted: list[Mount]) -> list[str]:
    """The mount points of overlays that show or hide one of ``protected`` (on, over or inside
    their merged directory) and name a layer by a relative path (audit 15), or by one with a
    symlink on its way (audit 17: a release link switched since the mount left the layer under
    the old target, which its name no longer reaches): where that layer lies is unknown, so no
    write grant can be shown not to reach it. Callers refuse."""
    held = [
        (point, layers)
        for point, _, _, layers, _, _ in mounted
        if layers and any(under(top, point) or under(point, top) for top in protected)
    ]
    return [
        point
        for point, layers in held
        if any(
            not layer.startswith("/") or os.path.realpath(layer) != posixpath.normpath(layer)
            for layer in layers
        )
    ]


def refuse_unknown_overlays(protected: Iterable[str], mounted: list[Mount], granted: str, what: str) -> None:
    """Refuse (PolicyError) the write grant ``granted`` while :func:`unknown_overlays` finds an
    overlay that holds one of ``protected`` (``what`` they are, for the message)."""
    hidden = unknown_overlays(protected, mounted)
    if hidden:
        raise PolicyError(
            f"a grant to write {granted} is refused: the overlay mounted at {hidden[0]} holds {what}, "
            "and names a layer by a relative path or through a symlink, so privsep cannot tell "
            "whether a write grant reaches that layer; mount the overlay with absolute, real paths, "
            "or grant read-only"
        )


def _mount_id(path: str) -> int | None:
    """The id of the mount that serves ``path`` (or, when it does not exist, its nearest
    existing ancestor), as the kernel says (statx), or None."""
    probe = path
    while True:
        try:
            fd = os.open(probe, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe == "/":
                return None
            probe = posixpath.dirname(probe)
        except OSError:
            return None
    try:
        return _linux.mount_id(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def mount_forms(real: str, mounted: list[Mount]) -> list[str]:
    """``real`` (a resolved path) as ``DEVICE:PATH-WITHIN-ITS-FILESYSTEM``, one form for every
    name a directory has: a bind mount shows the same directory under another path, which
    ``realpath`` does not see (fresh-eyes audit 13: a bind of privsep's package elsewhere, granted,
    let the sandbox edit it). [] without mountinfo. Compared with :func:`under`, as paths are.

    The mount is the one the kernel resolves ``real`` through (its id, :func:`_mount_id`);
    only when that is unknown, the deepest mount point above it, the later of two."""
    serving = _mount_id(real)
    best: Mount | None = None
    for mount in mounted:
        if not under(real, mount[0]):
            continue
        if serving is not None and mount[5] == serving:
            best = mount
            break
        if best is None or len(mount[0]) >= len(best[0]):
            best = mount  # the deepest mount point; of two on the same point, the later
    if best is None:
        return []
    point, device, root = best[0], best[1], best[2]
    within = root.rstrip("/") + real[len(point.rstrip("/")) :]  # "" for the root of the filesystem
    return [f"{device}:{posixpath.normpath(within) if within else '/'}"]


def reach_forms(real: str, mounted: list[Mount]) -> list[str]:
    """Every form of what a grant of ``real`` reaches: ``real`` itself, its :func:`mount_forms`,
    those of each mount beneath it (a grant holds them: the view binds recursively); inside or
    over an overlay's layer, the merged directory's; inside or over an overlay's merged
    directory, its upper directory's, where the writes land (audits 14 and 15: a bind of
    privsep's package inside a granted directory; an overlay's lower directory, granted; an
    overlay's merged directory granted while its upper one is on the import path). The grant
    and the layers are compared in every form, a filesystem's as well as a path's (audit 16: a
    layer reached through a second mount of its filesystem)."""
    forms = held_forms(real, mounted)
    granted = [real, *mount_forms(real, mounted)]
    for point, _, _, layers, upper, _ in mounted:
        for layer in layers:
            if not layer.startswith("/"):
                continue  # unknown_overlays refuses the grants such an overlay could hide
            forms += _through(granted, _forms_of(layer, mounted), point, mounted)
        if upper.startswith("/"):
            forms += _through(granted, _forms_of(point, mounted), upper, mounted)
    return list(dict.fromkeys(forms))


def _forms_of(path: str, mounted: list[Mount]) -> list[str]:
    """``path`` as named, as resolved, and where it lies in its filesystem."""
    return [*named_and_real(path), *mount_forms(os.path.realpath(path), mounted)]


def _through(granted: list[str], source: list[str], other: str, mounted: list[Mount]) -> list[str]:
    """What a grant (its forms ``granted``) reaches of ``other``, a directory that shows what
    ``source`` (its forms) holds: where the grant lies inside ``source``, the same place inside
    ``other``; where it holds ``source``, all of ``other``."""
    found: list[str] = []
    for grant in granted:
        for form in source:
            if under(grant, form):
                found += held_forms(other.rstrip("/") + grant[len(form.rstrip("/")) :], mounted)
            elif under(form, grant):
                found += held_forms(other, mounted)
    return found


def import_dirs(path: Iterable[str] | None = None) -> list[str]:
    """The entries of ``sys.path`` (or ``path``) as named and as real absolute paths, in order;
    "" is the cwd."""
    found: dict[str, None] = {}
    for entry in sys.path if path is None else path:
        for form in named_and_real(entry or os.getcwd()):
            found[form] = None
    return list(found)


#: Directories no sandbox may write in or over, beyond sys.path: see :func:`protect`.
_protected: list[str] = []


def protect(paths: Iterable[str]) -> None:
    """Also refuse, for the rest of this process, write grants on, over or inside ``paths``.

    For code this process runs by path rather than through ``sys.path``: the
    pytest plugin protects the session's test directories, whose files
    (``conftest.py``, the test modules) pytest and the plugin's forkserver
    import, unconfined, now and in the next session.
    """
    for path in paths:
        for form in named_and_real(path):
            if form not in _protected:
                _protected.append(form)


#: Why a directory is refused whole, by kind (see :func:`_whole_dirs`).
_PYTHON = (
    "which holds the Python this process runs (its interpreter, environment or, under pytest, the "
    "tests it imports), so what the sandbox changed there would run outside the sandbox"
)
_LOADED = (
    "from which this process imported a module that is not on sys.path (privsep itself, in an "
    "editable install, among them), so what the sandbox changed there would run in the broker"
)
_PYCACHE = (
    "where this process reads its compiled bytecode (PYTHONPYCACHEPREFIX), so bytecode the "
    "sandbox left there would run in the broker"
)
_IMPORTABLE = (
    "a mount where this process could import a Python module from (sys.path), so code the "
    "sandbox left there would run in the broker"
)
_LIBRARIES = (
    "where the dynamic loader looks for shared libraries (LD_LIBRARY_PATH), so a library the "
    "sandbox left there would be loaded into the broker with a module it imports later"
)


def _whole_dirs(dirs: list[str]) -> list[tuple[str, str]]:
    """Paths refused whole, each with why (``dirs``: the import directories):

    - the interpreter's own (each hop of ``sys.executable``'s symlinks: the helpers are
      started from it), the environment's prefix (a venv's ``pyvenv.cfg``, ``bin``,
      ``site-packages``), and what :func:`protect` was given;
    - each package (its directory) and top-level module (its file) imported from outside
      ``dirs``: an import hook's (setuptools' default editable install puts privsep there),
      or a path a host imported from and then took off ``sys.path``: their later imports come
      from there (fresh-eyes audit 12);
    - ``sys.pycache_prefix`` and ``LD_LIBRARY_PATH``'s directories (an empty entry is the
      working directory): bytecode and libraries of what the broker imports later.
    """
    # A virtual environment is Python through and through; a system prefix (/usr) is not, and
    # its Python parts are on sys.path already.
    venv = sys.prefix != sys.base_prefix
    found = [form for p in (sys.prefix, sys.exec_prefix) if p and venv for form in named_and_real(p)]
    hop = sys.executable
    for _ in range(40):  # a chain of links; the kernel's own bound on them
        if not hop:
            break
        found += named_and_real(os.path.dirname(hop) or ".")
        if not os.path.islink(hop):
            break
        target = os.readlink(hop)
        hop = target if target.startswith("/") else posixpath.join(os.path.dirname(hop), target)
    whole = [(top, _PYTHON) for top in dict.fromkeys([*found, *_protected])]
    whole += [(top, _LOADED) for top in _loaded_outside(dirs)]
    if sys.pycache_prefix:
        whole += [(top, _PYCACHE) for top in named_and_real(sys.pycache_prefix)]
    # An empty value is no path at all (glibc ignores it); an empty entry of a longer one is the
    # working directory (audit 14: `export LD_LIBRARY_PATH=` refused the project's build dir).
    library_path = os.environ.get("LD_LIBRARY_PATH", "")
    for entry in library_path.split(":") if library_path else ():
        whole += [(top, _LIBRARIES) for top in named_and_real(entry or ".")]
    return whole


def _loaded_outside(dirs: list[str]) -> list[str]:
    """The directory of each package, and the file of each top-level module, this process
    imported from outside ``dirs`` (its submodules are found beneath the package's ``__path__``)."""
    found: dict[str, None] = {}
    for name, module in list(sys.modules.items()):
        paths = getattr(module, "__path__", None)
        file = getattr(module, "__file__", None)
        if paths is not None:  # a package (a namespace one too): where its submodules come from
            places = [p for p in list(paths) if isinstance(p, str)]
        elif "." not in name and isinstance(file, str):
            places = [file]
        else:
            continue  # a submodule: beneath its package's path; or built in, frozen
        for place in places:
            forms = _module_forms.get(place)
            if forms is None:
                forms = _module_forms[place] = named_and_real(place)
            for form in forms:
                if not any(under(form, d) for d in dirs):
                    found[form] = None
    return list(found)


#: Where each imported module's path resolves, found once per process: resolving them all
#: again for every plan with a write grant cost a Sandbox under pytest ~3 ms a plan.
_module_forms: dict[str, list[str]] = {}


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _importable(name: str, dirs: list[str]) -> bool:
    """Whether the broker could import something called ``name`` (a first component) from a
    directory on its path: an existing module or regular package, a name of the standard library
    or of a module already imported, or a bytecode cache. (A plain directory is a namespace
    package only for a name nothing else on the path has; the broker imports no such name.)"""
    if name == "__pycache__" or name.lower().endswith((".pth", ".dist-info", ".egg-info", ".egg-link")):
        # A bytecode cache; what site runs at start; a distribution's metadata and entry
        # points (importlib.metadata compares their names in lower case).
        return True
    # Not only identifiers: __import__ takes any name, and the standard library imports some
    # that are not (sysconfig's _sysconfigdata__x86_64-linux-gnu).
    stem = name.split(".", 1)[0]
    if not stem:
        return False
    if stem in sys.stdlib_module_names or stem in sys.modules:
        return True
    for d in dirs:
        if os.path.exists(posixpath.join(d, stem, "__init__.py")) or os.path.exists(
            posixpath.join(d, stem + ".py")
        ):
            return True
        try:
            # an extension module: stem.cpython-311-x86_64-linux-gnu.so, stem.abi3.so, stem.so
            if any(n.startswith(stem + ".") and n.endswith(".so") for n in os.listdir(d)):
                return True
        except OSError:
            continue
    return False


def check_grants(grants: Iterable[tuple[str, Iterable[str]]], path: Iterable[str] | None = None) -> None:
    """Refuse (PolicyError) a grant of ``(path, access words)`` that could write where the broker
    imports from (see the module). Paths are compared as named, as resolved and as where they
    are in their filesystem (:func:`mount_forms`: a bind mount is the same directory)."""
    writes = [granted for granted, access in grants if not WRITES.isdisjoint(access)]
    if not writes:
        return  # most plans: nothing to resolve (~0.3 ms of realpath calls otherwise)
    dirs = import_dirs(path)
    mounted = mounts()
    whole = [(form, top, why) for top, why in _whole_dirs(dirs) for form in held_forms(top, mounted)]
    entries = [(form, entry) for entry in dirs for form in [entry, *mount_forms(entry, mounted)]]
    # A mount inside an import directory, under a name the broker could import, is refused whole.
    whole += [
        (form, f"{entry}/{first}", _IMPORTABLE)
        for entry in dirs
        for point, device, root, *_ in mounted
        if point != entry and under(point, entry)
        for first in [point[len(entry.rstrip("/")) + 1 :].split("/", 1)[0]]
        if _importable(first, dirs)
        for form in [f"{device}:{root}"]
    ]
    protected = [top for _, top, _ in whole] + [entry for _, entry in entries]
    refuse_unknown_overlays(protected, mounted, writes[0], "a directory this process imports Python from")
    for granted in writes:
        for real in named_and_real(granted):
            own = [real, *mount_forms(real, mounted)]
            for form in reach_forms(real, mounted):
                _check_one(granted, form, whole, entries, dirs, held=form not in own)


def held_forms(path: str, mounted: list[Mount]) -> list[str]:
    """``path`` (resolved), its :func:`mount_forms`, and those of each mount beneath it: what a
    grant of it reaches (the view binds recursively), or what a protected path holds."""
    return [path, *mount_forms(path, mounted)] + [
        f"{device}:{root}" for point, device, root, *_ in mounted if point != path and under(point, path)
    ]


def _check_one(
    granted: str,
    form: str,
    whole: list[tuple[str, str, str]],
    entries: list[tuple[str, str]],
    dirs: list[str],
    *,
    held: bool = False,
) -> None:
    """``form``: one form of the grant (``held``: of what it reaches, not of itself: a mount
    beneath it, an overlay's merged directory); ``whole`` and ``entries``: (form, path shown, [why])."""
    for top_form, top, why in whole:
        if under(top_form, form) or under(form, top_form):
            raise PolicyError(
                f"a grant to write {granted} is refused: it is on, over or inside {top}, {why}; "
                "grant a directory outside it"
            )
    for entry_form, entry in entries:
        if under(entry_form, form):
            where = "is" if entry_form == form and not held else "holds"
            raise PolicyError(
                f"a grant to write {granted} is refused: it {where} {entry}, where this process "
                "imports Python modules from (sys.path), so code the sandbox left there would run "
                "in the broker; grant a directory outside it, or start privsep from elsewhere "
                "(its working directory or script's directory is on sys.path)"
            )
        if under(form, entry_form):
            first = form[len(entry_form.rstrip("/")) + 1 :].split("/", 1)[0]
            if _importable(first, dirs):
                raise PolicyError(
                    f"a grant to write {granted} is refused: it is inside {entry}/{first}, which "
                    f"this process could import as a Python module from {entry} (sys.path), so "
                    "code the sandbox left there would run in the broker; grant a directory "
                    "outside it"
                )
