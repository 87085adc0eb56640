"""The confined side of ``@pytest.mark.privsep``: import one test module, run one test, report.

``privsep.pytest_plugin`` runs ``run_test`` through ``Sandbox.call`` in a
fresh confined Python child, forked from the plugin's forkserver. Before
the first test of a module, ``preload`` runs in that forkserver (unconfined,
see the plugin's docstring): it imports pytest and the test module there,
so each child finds them already imported. A child whose forkserver could
not preload the module (or that was started with a fresh interpreter)
imports it from its file itself. Either way the module is compiled with
pytest's assertion rewriting when pytest is importable, so a failing
``assert`` explains itself as it would on the host. The child calls the
test with its JSON parameters and returns a JSON report (never raises for
the test's own failures):

    {"outcome": "passed" | "failed" | "skipped" | "xfailed",
     "type": str, "message": str, "traceback": str,   # for "failed"; message also for skip/xfail
     "stdout": str, "stderr": str}                    # what the test printed through sys.stdout/stderr

The report is bounded to fit one frame of the channel. Only the standard
library is imported here; pytest (for the outcome exceptions and the
rewriting) is imported lazily, and the test module imports it anyway.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from types import ModuleType, TracebackType
from typing import Any

__all__ = ["MAX_REPORT", "preload", "run_test"]

#: Largest report, in bytes of ASCII JSON: well inside the channel's 64 KiB frame.
MAX_REPORT = 48_000
_FIELD_LIMITS = {"message": 4000, "traceback": 24000, "stdout": 8000, "stderr": 8000}


def _compile(source: bytes, path: str) -> Any:
    tree = ast.parse(source, filename=path)
    try:
        from _pytest.assertion.rewrite import rewrite_asserts  # noqa: PLC0415 - only if pytest is there
    except ImportError:
        pass
    else:
        rewrite_asserts(tree, source, path, None)
    return compile(tree, path, "exec", dont_inherit=True)


def _load(path: str, name: str) -> ModuleType:
    """Import the test module ``name`` from ``path`` (its parent packages through ``sys.path``)."""
    existing = sys.modules.get(name)
    if existing is not None and _same_file(getattr(existing, "__file__", None), path):
        return existing  # preloaded by the forkserver (or imported by a module before it)
    parent = name.rpartition(".")[0]
    if parent:
        importlib.import_module(parent)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"cannot import {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    with open(path, "rb") as f:
        code = _compile(f.read(), path)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - the test module, as pytest itself loads it
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _same_file(found: str | None, path: str) -> bool:
    """A module of the same name from another file (``--import-mode=importlib``) is not this one."""
    if found is None:
        return False
    if found == path:
        return True
    try:
        return os.path.samefile(found, path)
    except OSError:
        return False


def preload(path: str, module: str, paths: Sequence[str]) -> None:
    """In the plugin's forkserver, once per test module: import pytest and the module there.

    Every child forked afterwards starts with both imported, and its test
    runs in milliseconds instead of paying for their import. This runs in
    the forkserver, unconfined: the module-level code of the test file (and
    of what it imports), which pytest's collection has already run on the
    host; so the plugin asks for it before the session's first confined test
    runs, and only with ``paths`` that are on pytest's own ``sys.path``. They
    go on ``sys.path`` for the import alone. What the module prints at import is dropped; if it
    raises, the forkserver reports why and each child imports the module
    itself, confined.
    """
    saved = list(sys.path)
    for entry in reversed(paths):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        import pytest  # noqa: F401, PLC0415 - the outcome exceptions, for every child

        with _silenced():
            _load(path, module)
    finally:
        # The forkserver itself imports nothing from the tests' directories afterwards (a
        # confined test may write there); each child applies its PYTHONPATH itself.
        sys.path[:] = saved


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Nothing printed at import reaches the forkserver's fds 1 and 2 (the host's, or pytest's capture)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _resolve(module: ModuleType, qualname: str) -> Any:
    """The test callable: ``test_x``, or ``TestX.test_x`` bound to a fresh instance as pytest does."""
    *owners, name = qualname.split(".")
    if not owners:
        return getattr(module, name)
    owner: Any = module
    for part in owners:
        owner = getattr(owner, part)
    return getattr(owner(), name)


def _hidden(exc: BaseException | None, seen: set[int]) -> set[tuple[str, int, str]]:
    """The frames marked ``__tracebackhide__`` (as pytest hides them), in ``exc`` and its chain."""
    hidden: set[tuple[str, int, str]] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            if frame.f_locals.get("__tracebackhide__"):
                hidden.add((frame.f_code.co_filename, lineno, frame.f_code.co_name))
        hidden |= _hidden(exc.__context__, seen)
        exc = exc.__cause__
    return hidden


def _prune(
    te: traceback.TracebackException | None, hidden: set[tuple[str, int, str]], seen: set[int]
) -> None:
    if te is None or id(te) in seen:
        return
    seen.add(id(te))
    kept = [f for f in te.stack if (f.filename, f.lineno, f.name) not in hidden]
    if kept:
        te.stack = traceback.StackSummary.from_list(kept)
    _prune(te.__cause__, hidden, seen)
    _prune(te.__context__, hidden, seen)


def _traceback_text(exc: BaseException, tb: TracebackType | None) -> str:
    # Start below run_test's own frame, and leave out hidden helpers (privsep.testing's).
    start = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    te = traceback.TracebackException(type(exc), exc, start)
    _prune(te, _hidden(exc, set()), set())
    return "".join(te.format())


def _bounded(report: dict[str, str]) -> dict[str, str]:
    for key, limit in _FIELD_LIMITS.items():
        value = report.get(key, "")
        if len(value) > limit:
            report[key] = _cut(key, value, limit)
    report["type"] = report.get("type", "")[:200]
    while len(json.dumps(report)) > MAX_REPORT:  # escapes can grow text up to 6x
        key = max(_FIELD_LIMITS, key=lambda k: len(json.dumps(report.get(k, ""))))
        report[key] = _cut(key, report[key], len(report[key]) // 4)
    return report


def _cut(key: str, value: str, limit: int) -> str:
    # Tracebacks and output keep their end (the failure), messages their start.
    if key == "message":
        return value[:limit] + " [...]"
    return "[...]\n" + value[len(value) - limit :]


def run_test(path: str, module: str, qualname: str, params: dict[str, Any]) -> dict[str, str]:
    """Import ``module`` from ``path``, call ``qualname(**params)``, and report how it went."""
    out, err = io.StringIO(), io.StringIO()
    report: dict[str, str]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            test = _resolve(_load(path, module), qualname)
            result = test(**params)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(f"{qualname} is async: a confined test must be a plain function")
        report = {"outcome": "passed"}
    except BaseException as exc:  # every failure of the test is reported, as text
        report = _failure(exc)
    report["stdout"] = out.getvalue()
    report["stderr"] = err.getvalue()
    return _bounded(report)


def _failure(exc: BaseException) -> dict[str, str]:
    outcome = "failed"
    pytest = sys.modules.get("pytest")
    if pytest is not None:
        if isinstance(exc, pytest.skip.Exception):
            outcome = "skipped"
        elif isinstance(exc, pytest.xfail.Exception):
            outcome = "xfailed"
    message = getattr(exc, "msg", None) if outcome != "failed" else None
    return {
        "outcome": outcome,
        "type": type(exc).__qualname__,
        "message": str(message if message is not None else exc),
        "traceback": _traceback_text(exc, exc.__traceback__) if outcome == "failed" else "",
    }
