"""Assertions for tests that run inside a confined child (``@pytest.mark.privsep``, ``Sandbox.call``).

Importable in a confined child: it needs the standard library, ``privsep.client``
and ``privsep.errors`` only, never the broker.

``assert_confined()``
    The calling process is confined as privsep confines a child: read from
    ``/proc/self/status`` and ``/proc/self/fd``. Every check that fails is
    named in one ``AssertionError``.
``assert_denied(fn, *args, **kwargs) -> PermissionError``
    ``fn(*args, **kwargs)`` is refused. A refusal is a ``PermissionError``,
    from either side of the boundary:

    - the broker's: ``privsep.DeniedError`` (a ``PermissionError``) from
      ``privsep.client``; its message names the rule that decided and the
      flag that would allow it;
    - the kernel's: ``PermissionError``, which Python raises for ``EPERM``
      and ``EACCES`` (a syscall the seccomp filter answers with ``EPERM``,
      Landlock's ``EACCES``, a uid check).

    The exception is returned for the test to inspect (``isinstance(err,
    DeniedError)`` tells the two apart). Anything else fails the assertion:
    returning normally (a returned object with a ``close`` method, such as
    a file or socket, is closed first), ``FileNotFoundError`` (the path is
    not in the child's view: see ``assert_not_visible``), ``EROFS`` (a
    write to the read-only view) and every other exception, which is
    chained as the assertion's cause.
``assert_not_visible(path)``
    ``path`` does not exist in the child's view of the filesystem:
    ``os.lstat`` raises ``FileNotFoundError`` (or ``NotADirectoryError``).
    This checks what the kernel shows the child, not what the broker would
    grant: use ``assert_denied(client.open, path)`` for that.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

from privsep.client import ENV_VAR
from privsep.plan.spawnplan import SANDBOX_ID

__all__ = ["CONFINED_GID", "CONFINED_UID", "assert_confined", "assert_denied", "assert_not_visible"]

#: The identity every confined child runs as, as it sees itself: its user namespace maps it to
#: the sandbox's own host id (root broker) or to the broker's uid (non-root broker).
CONFINED_UID = SANDBOX_ID
CONFINED_GID = SANDBOX_ID
_CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def _status() -> dict[str, str]:
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
        fields = (line.partition(":") for line in f)
        return {name: value.strip() for name, _, value in fields}


def _open_fds() -> set[int]:
    """This process's fd table, without the descriptor used to read it."""
    listed = os.listdir("/proc/self/fd")
    fds = set()
    for name in listed:
        try:
            os.fstat(int(name))
        except OSError:
            continue  # the listdir's own descriptor, closed by now
        fds.add(int(name))
    return fds


def _identity_problems(status: dict[str, str]) -> list[str]:
    problems = []
    for field, want in (("Uid", CONFINED_UID), ("Gid", CONFINED_GID)):
        values = status.get(field, "").split()
        if len(values) != 4 or any(v != str(want) for v in values):
            problems.append(
                f"{field} (real, effective, saved, filesystem) is {' '.join(values) or '?'}, want {want}"
            )
    if status.get("Groups", ""):
        problems.append(f"supplementary groups {status['Groups']}, want none")
    return problems


def _fd_problems() -> list[str]:
    raw = os.environ.get(ENV_VAR)
    allowed = {0, 1, 2}
    problems = []
    if raw is None:
        problems.append(f"{ENV_VAR} is not set (not started by privsep)")
    elif not raw.isdigit():
        problems.append(f"{ENV_VAR}={raw!r} is not a descriptor number")
    else:
        channel = int(raw)
        allowed.add(channel)
        try:
            is_socket = stat.S_ISSOCK(os.fstat(channel).st_mode)
        except OSError:
            problems.append(f"{ENV_VAR}={channel} is not an open descriptor")
        else:
            if not is_socket:
                problems.append(f"{ENV_VAR}={channel} is not a socket")
    extra = sorted(_open_fds() - allowed)
    if extra:
        problems.append(f"descriptors {extra} are open besides 0, 1, 2 and {ENV_VAR}")
    return problems


def assert_confined() -> None:
    """Assert this process is confined: no_new_privs, a seccomp filter, no capabilities,
    uid/gid 65534 without groups, and no descriptor but 0, 1, 2 and the channel.

    Call it before the test opens files or sockets of its own: any descriptor
    besides 0, 1, 2 and ``PRIVSEP_FD`` counts as a leak.
    """
    __tracebackhide__ = True
    try:
        status = _status()
    except OSError as exc:
        raise AssertionError(f"not confined, or no /proc: cannot read /proc/self/status: {exc}") from None
    problems = []
    if status.get("NoNewPrivs") != "1":
        problems.append(f"NoNewPrivs is {status.get('NoNewPrivs', '?')}, want 1")
    if status.get("Seccomp") != "2":
        problems.append(f"Seccomp is {status.get('Seccomp', '?')}, want 2 (a filter)")
    for name in _CAPABILITY_SETS:
        value = status.get(name, "?")
        try:
            empty = int(value, 16) == 0
        except ValueError:
            empty = False
        if not empty:
            problems.append(f"{name} is {value}, want 0")
    problems += _identity_problems(status)
    problems += _fd_problems()
    if problems:
        raise AssertionError("the process is not confined: " + "; ".join(problems))


def _describe(fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    if module and module != "builtins":
        name = f"{module}.{name}"
    shown = [repr(a)[:200] for a in args] + [f"{k}={v!r:.200}" for k, v in kwargs.items()]
    return f"{name}({', '.join(shown)})"


def assert_denied(fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> PermissionError:
    """Call ``fn(*args, **kwargs)`` and assert it is refused with a ``PermissionError``.

    Returns the exception: a ``privsep.DeniedError`` when the broker refused
    (its message names the rule and the flag that would allow it), else the
    kernel's ``PermissionError`` (``EPERM``/``EACCES``). Anything else raises
    ``AssertionError`` (see the module's docstring).
    """
    __tracebackhide__ = True
    call = _describe(fn, args, kwargs)
    try:
        result = fn(*args, **kwargs)
    except PermissionError as exc:
        return exc
    except FileNotFoundError as exc:
        raise AssertionError(
            f"{call} raised FileNotFoundError, not a denial: the path is not in this process's view "
            f"(assert_not_visible checks that): {exc}"
        ) from None
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise AssertionError(
            f"{call} raised {type(exc).__name__} ({code}), not a denial (PermissionError): {exc}"
        ) from None
    except Exception as exc:
        raise AssertionError(
            f"{call} raised {type(exc).__name__}, not a denial (PermissionError): {exc}"
        ) from exc
    close = getattr(result, "close", None)
    if callable(close):
        close()
    raise AssertionError(f"{call} was allowed (it returned {result!r:.200}); a denial was expected")


def assert_not_visible(path: str | os.PathLike[str]) -> None:
    """Assert ``path`` does not exist in this process's view of the filesystem."""
    __tracebackhide__ = True
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise AssertionError(
            f"{os.fspath(path)!r}: lstat raised {type(exc).__name__} ({exc}), so it is in the view"
        ) from exc
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
    raise AssertionError(f"{os.fspath(path)!r} is visible in this process's view (a {kind})")
