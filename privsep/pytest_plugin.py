"""The pytest plugin (entry point ``pytest11``: ``privsep``): test your own code under least privilege.

- ``@pytest.mark.privsep(policy=..., allow_read=[...], allow_write=[...],
  allow_connect=[...], allow_bind=[...], secrets=[...], python_path=[...],
  timeout=...)`` on a test (or a class, or ``pytestmark``) runs the test body
  itself in a fresh confined child, through ``Sandbox.call`` of
  ``privsep._pytest_child:run_test``. The directory the test module is
  imported from (the file's directory, or the root of its package) joins
  the child's view and ``PYTHONPATH``, read-only. Its failures come back as
  text and are reported as normal failures, with the child's traceback;
  what it printed through ``sys.stdout``/``stderr`` is shown as captured
  output; ``pytest.skip``/``pytest.xfail`` work.
- The ``sandbox`` fixture: an open ``privsep.Sandbox`` from the same marker's
  options (or ``--privsep-policy``), closed after the test. A test that takes
  ``sandbox`` runs on the host (it drives the sandbox); the marker then only
  configures the fixture.

Inside a confined test there are no fixtures: its arguments may only be
``@pytest.mark.parametrize`` values that are JSON values; asking for any
other fixture is an error at set-up. Autouse fixtures, conftest hooks and
xunit set-up still run on the host, around the child. Relative paths in the
marker are taken from the test file's directory. The child's working
directory is the policy's (``/``).

Tests without the marker or the fixture are left alone: the plugin costs
them one marker lookup. The broker is imported only when a sandbox is made.

How a confined test runs, and what runs unconfined
---------------------------------------------------
A fresh interpreter per test would cost each one about half a second
(pydantic, pytest and the test module imported again). Instead the plugin
keeps a ``Sandbox(start_method="forkserver")`` open for the session, one
per set of marker options (the last few used). The first confined test's
forkserver is started as soon as pytest has collected, before any
confined test runs, and asked to import pytest and the modules of every
test with the same options (``_pytest_child.preload``), while this process
imports the broker. No forkserver imports a test module later: by then a
confined test may have rewritten it or planted a module beside it, and the
forkserver is unconfined (a fresh-eyes audit found exactly that). Tests of
other options import their module in each child, confined. Each test is then
one fork of that forkserver, which goes through every confinement layer,
in order, failing closed
(namespaces, identity, Landlock, rlimits, seccomp), and runs the test
function in the confined fork: a child per test, so nothing a test does
(globals, files in its ``/tmp``, threads) is seen by the next. A kept
sandbox is opened anew when a directory its grants hold open has been
replaced (a fixture that makes a granted directory anew for each test), as
a sandbox per test would have seen the new one.

The forkserver never runs a test, but it does run the test file's
module-level code (and the imports it makes), unconfined, with a clean
environment of its own. That is accepted: it is the user's own code, which
pytest's collection has already run, unconfined, in the host process that
drives the tests. What it means for a test: the module-level code is not
what is under test (import what is, or call it, inside the test body to
test it confined), and the module's globals are computed outside the
sandbox (a module-level ``open`` of a file the policy denies succeeds, and
the test sees its content). If the module cannot be imported in the
forkserver, each test's child imports it itself, confined, as it always
did. If the forkserver cannot start, the tests run as before, each in a
fresh confined interpreter, and a warning says why; a test never runs
unconfined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import stat
import sys
import warnings
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import pytest

from privsep._printable import printable
from privsep.errors import ChildError, PrivsepError
from privsep.plan.importpath import import_dirs, protect

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

    from privsep.forkserver import ForkServer
    from privsep.sandbox import Sandbox

__all__ = ["ConfinedTestFailure", "sandbox"]

MARKER = "privsep"
RUNNER = "privsep._pytest_child:run_test"
PRELOAD = "privsep._pytest_child:preload"
_LIST_OPTIONS = ("allow_read", "allow_write", "allow_connect", "allow_bind", "secrets", "python_path")
_PATH_OPTIONS = ("allow_read", "allow_write", "python_path")
_OPTIONS = ("policy", *_LIST_OPTIONS, "timeout")
_OUTCOMES = ("passed", "failed", "skipped", "xfailed")


def _leave_privsep_unrewritten() -> None:
    """Let privsep's own modules import as compiled, not through pytest's assertion rewriting.

    pytest marks every module of an installed plugin's distribution for rewriting, so each
    session parsed, rewrote and compiled the ~140 modules a confined test imports (the
    broker, the plan, the protocol), and with ``PYTHONDONTWRITEBYTECODE`` it cannot keep
    the result: about a third of a second per session. privsep's ``assert``s are internal
    invariants; nothing reads their messages. The test modules themselves are still
    rewritten, here and in the confined child. This reaches into pytest's import hook; if
    its shape changes, nothing breaks, and privsep is merely rewritten again.
    """
    for finder in sys.meta_path:
        marked = getattr(finder, "_must_rewrite", None)
        if isinstance(marked, set) and "privsep" in marked:
            marked.discard("privsep")
            cache = getattr(finder, "_marked_for_rewrite_cache", None)
            if isinstance(cache, dict):
                cache.clear()


_leave_privsep_unrewritten()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("privsep", "privsep: run tests under least privilege")
    group.addoption(
        "--privsep-policy",
        default="python",
        metavar="NAME|FILE",
        help="policy for @pytest.mark.privsep tests and the `sandbox` fixture when the marker "
        "names none (default: python)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "privsep(policy=None, allow_read=(), allow_write=(), allow_connect=(), allow_bind=(), "
        "secrets=(), python_path=(), timeout=None): run the test body in a confined child under this "
        "policy and grants (or configure the `sandbox` fixture, for a test that takes it)",
    )
    config.stash[_RUNNERS] = _Runners()


def pytest_unconfigure(config: pytest.Config) -> None:
    runners = config.stash.get(_RUNNERS, None)
    if runners is not None:
        runners.close()


# -- options --------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    policy: str
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    allow_connect: tuple[str, ...] = ()
    allow_bind: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    python_path: tuple[str, ...] = ()
    timeout: float | None = None
    extra_path: tuple[str, ...] = ()
    """Directories the runner needs on top of ``python_path`` (where the test module is)."""

    def sandbox(self, start_method: Literal["exec", "forkserver"] = "exec") -> Sandbox:
        from privsep.sandbox import Sandbox  # noqa: PLC0415 - the broker only when a test needs it

        return Sandbox(
            self.policy,
            allow_read=self.allow_read,
            allow_write=self.allow_write,
            allow_connect=self.allow_connect,
            allow_bind=self.allow_bind,
            secrets=self.secrets,
            python_path=self.python_path + self.extra_path,
            timeout=self.timeout,
            start_method=start_method,
        )


class _MarkerError(Exception):
    pass


def _options(item: pytest.Item) -> _Options:
    """The marker's options (the closest marker wins), checked; defaults from the command line."""
    marker = item.get_closest_marker(MARKER)
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    args = marker.args if marker else ()
    where = f"@pytest.mark.{MARKER}"
    if len(args) > 1 or (args and "policy" in kwargs):
        raise _MarkerError(f"{where} takes at most one positional argument, the policy")
    if args:
        kwargs["policy"] = args[0]
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise _MarkerError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
    policy = kwargs.pop("policy", None)
    if policy is None:
        policy = item.config.getoption("privsep_policy")
    if not isinstance(policy, str | os.PathLike):
        raise _MarkerError(f"{where}: policy must be a shipped policy's name or a file path")
    timeout = kwargs.pop("timeout", None)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise _MarkerError(f"{where}: timeout must be a number of seconds")
    base = item.path.parent
    lists: dict[str, tuple[str, ...]] = {}
    for name, value in kwargs.items():
        values = [value] if isinstance(value, str | os.PathLike) else value
        if not isinstance(values, Sequence) or not all(isinstance(v, str | os.PathLike) for v in values):
            raise _MarkerError(f"{where}: {name} must be a list of strings")
        if name in _PATH_OPTIONS:
            lists[name] = tuple(str(base / os.fspath(v)) for v in values)
        else:
            lists[name] = tuple(os.fspath(v) for v in values)
    return _Options(policy=os.fspath(policy), timeout=timeout, **lists)


def _fail_setup(message: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(message, pytrace=False)


# -- the sandbox fixture ---------------------------------------------------


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """An open ``privsep.Sandbox`` from the test's ``privsep`` marker or ``--privsep-policy``."""
    try:
        made = _options(request.node).sandbox()
    except (_MarkerError, PrivsepError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        _fail_setup(f"sandbox fixture: {problem}")
    with made:
        yield made


# -- the sandboxes confined tests run in -------------------------------------------


@dataclass(eq=False)
class _Runner:
    """An open Sandbox for the confined tests of one set of options, and what its forkserver holds."""

    box: Sandbox
    forkserver: ForkServer | None
    """None: the exec start method, each test a fresh interpreter (the forkserver could not start)."""
    pinned: tuple[_Identity, ...]
    """What the broker's file grants held open when the sandbox opened (see :func:`_pinned`)."""
    preloaded: dict[str, bool] = dataclasses.field(default_factory=dict)
    """Test files the forkserver imported (True), or that each child imports itself (False)."""

    def stale(self) -> bool:
        """A granted directory was replaced since (a fixture made it anew): the pins are of the old one."""
        return _pinned(self.box) != self.pinned

    def run(self, test: _Test) -> object:
        """The test's report, from a fresh confined child (ChildError if the child died)."""
        self._preload(test)
        return self.box.call(RUNNER, str(test.path), test.module, test.qualname, test.params)

    def _preload(self, test: _Test) -> None:
        """A module the forkserver did not import before the session's first confined test is
        imported by each of its tests' children, confined: never by the forkserver afterwards.

        The forkserver is unconfined. Once a confined test has run, what it could write (a
        test file, a module planted beside one) may differ from what pytest's collection ran on
        the host, and importing it there would run the sandbox's code outside the sandbox."""
        self.preloaded.setdefault(str(test.path), False)


def _preload_paths(test: _Test) -> list[str]:
    """The test's import directories that are on this process's ``sys.path``: the forkserver then
    imports the module as pytest's collection did here, no module from elsewhere
    (``--import-mode=importlib`` puts no test directory on ``sys.path``)."""
    here = set(import_dirs())
    return [p for p in (os.path.abspath(p) for p in test.paths) if os.path.realpath(p) in here]


@dataclass(frozen=True)
class _Early:
    """A forkserver started while pytest collected, for the options of the first confined test."""

    options: _Options
    server: ForkServer
    asked: tuple[str, ...]
    """The test files it was asked to import as it started, in order: those of the session's
    confined tests that share the first one's options."""


_Identity = tuple[str, int, int] | None


def _pinned(box: Sandbox) -> tuple[_Identity, ...]:
    """The identity of each directory the broker pins for the policy's file grants, as it pins them.

    The broker opens each granted directory (an exact file grant: its
    directory) once, when the Sandbox opens, and serves the grant beneath
    that fd. A fresh Sandbox per test would pin what is there now; a kept
    one must be replaced when that is no longer what it pinned.
    """
    found: list[_Identity] = []
    for rule in box.policy.files:
        if rule.deny:
            continue
        for which, path in (("dir", rule.path), ("parent", os.path.dirname(rule.path))):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if which == "parent" or stat.S_ISDIR(st.st_mode):
                found.append((which, st.st_dev, st.st_ino))
                break
        else:
            found.append(None)
    return tuple(found)


@dataclass(frozen=True)
class _Test:
    """One confined test, as the child's runner takes it."""

    path: Path
    module: str
    qualname: str
    params: dict[str, Any]
    paths: tuple[str, ...]
    """The child's PYTHONPATH: the marker's python_path and where the module is imported from."""


class _Runners:
    """The session's open sandboxes for confined tests, one per set of options, the last few used.

    Each holds a broker and a forkserver (a Python process with pytest and
    the test modules imported): kept open, they spare every test but the
    first of a set of options the start of both; bounded, so that a suite
    with many different markers does not keep a forkserver for each.
    """

    KEPT = 4

    def __init__(self) -> None:
        self._open: dict[_Options, _Runner] = {}
        self._warned = False
        self._early: _Early | None = None
        self._early_answers: dict[str, bool] | None = None

    def start_early(self, options: _Options, tests: Sequence[_Test]) -> None:
        """Start the forkserver for ``options`` now, and ask it to import the modules of ``tests``.

        Called once pytest has collected, before any confined test has run:
        the modules are then what pytest's collection ran on this host, and
        the forkserver (unconfined) imports nothing later (see
        :meth:`_Runner._preload`). Its start and those imports run while this
        process imports the broker for the first confined test, which takes
        this forkserver when it opens its Sandbox. Importing the forkserver's
        module here costs ~20 ms: its broker side imports no pydantic.
        """
        from privsep import cgroups  # noqa: PLC0415 - only a session with confined tests
        from privsep.forkserver import ForkServer  # noqa: PLC0415

        # As Sandbox.__enter__ does before its forkserver exists: on cgroup v2 this process may
        # move into a leaf of its own (privsep.cgroups.v2), and the forkserver must go along.
        with contextlib.suppress(PrivsepError):
            cgroups.host()
        try:
            server = ForkServer()
        except OSError:
            return  # the first confined test starts one itself, and says so if it cannot
        asked: dict[str, None] = {}
        try:
            for test in tests:
                if str(test.path) not in asked:
                    server.ask_prepare(PRELOAD, str(test.path), test.module, _preload_paths(test))
                    asked[str(test.path)] = None
        except (OSError, PrivsepError):
            server.close()
            return
        self._early = _Early(options, server, tuple(asked))

    def preload_early(self) -> None:
        """Wait until the early forkserver has answered every preload (see start_early)."""
        early = self._early
        if early is None or self._early_answers is not None:
            return
        try:
            early.server.wait_ready()
            self._early_answers = {path: early.server.prepared() is None for path in early.asked}
        except PrivsepError:
            early.server.close()  # the first confined test starts one itself, and says so if it cannot
            self._early = None

    def kept(self, options: _Options) -> bool:
        return options in self._open

    def run(self, options: _Options, made: Sandbox | None, test: _Test) -> object:
        """Run ``test`` in the sandbox kept for ``options``, or in ``made`` (one of ``options``), opened.

        A kept sandbox whose pins are stale, or that cannot start the child
        (its forkserver has died), is dropped, and the test, which has not
        started, goes to a new one. A new one that cannot start it raises:
        that is the error to report.
        """
        runner = self._open.pop(options, None)
        if runner is not None and runner.stale():
            runner.box.close()
            runner = None
        if runner is not None:
            self._open[options] = runner  # the most recently used last
            try:
                return runner.run(test)
            except ChildError:
                raise
            except PrivsepError:
                self.drop(options)
        runner = self.open(options, made or options.sandbox(start_method="forkserver"))
        try:
            return runner.run(test)
        except ChildError:
            raise
        except PrivsepError:
            self.drop(options)
            raise

    def open(self, options: _Options, made: Sandbox) -> _Runner:
        """Open ``made`` (a forkserver Sandbox of ``options``) and keep it; if it cannot open, one that execs.

        A Sandbox that cannot open either way raises: the error is not the
        forkserver's, and the test reports it.
        """
        pinned = _pinned(made)  # before: what changes while it opens shows at the next test
        early = self._early if self._early is not None and self._early.options == options else None
        preloaded: dict[str, bool] = {}
        try:
            if early is not None:
                from privsep.forkserver import handing_over  # noqa: PLC0415 - loaded by start_early

                self._early = None
                with handing_over(early.server):
                    made.__enter__()
            else:
                made.__enter__()
            forkserver = made._need_parts().forkserver
            if forkserver is not None:
                forkserver.wait_ready()  # a forkserver that did not start falls back, as below
                if early is not None and forkserver is early.server:
                    # On a failure the forkserver carries on; each child imports the module itself.
                    if self._early_answers is None:
                        self._early_answers = {path: forkserver.prepared() is None for path in early.asked}
                    preloaded = dict(self._early_answers)
        except PrivsepError as exc:
            made.close()
            why = str(exc)
        else:
            return self._keep(options, _Runner(made, forkserver, pinned, preloaded))
        fallback = options.sandbox(start_method="exec")
        pinned = _pinned(fallback)
        fallback.__enter__()
        runner = self._keep(options, _Runner(fallback, None, pinned))
        if not self._warned:
            self._warned = True
            warnings.warn(
                pytest.PytestWarning(
                    f"privsep: the forkserver for @pytest.mark.{MARKER} tests could not start ({why}); "
                    "they run confined as before, each in a fresh interpreter (about half a second a test)"
                ),
                stacklevel=1,
            )
        return runner

    def _keep(self, options: _Options, runner: _Runner) -> _Runner:
        self._open[options] = runner
        while len(self._open) > self.KEPT:
            self.drop(next(iter(self._open)))
        return runner

    def drop(self, options: _Options) -> None:
        """Close the sandbox kept for ``options``, if any (the next test of those options opens one)."""
        runner = self._open.pop(options, None)
        if runner is not None:
            runner.box.close()

    def close(self) -> None:
        while self._open:
            self.drop(next(iter(self._open)))
        if self._early is not None:
            self._early.server.close()
            self._early = None


_RUNNERS = pytest.StashKey[_Runners]()


# -- confined tests ---------------------------------------------------------


def _is_confined(item: pytest.Item) -> bool:
    """A ``privsep``-marked test function that does not take the ``sandbox`` fixture."""
    if not isinstance(item, pytest.Function) or item.get_closest_marker(MARKER) is None:
        return False
    return "sandbox" not in _argnames(item)


def _argnames(item: pytest.Function) -> tuple[str, ...]:
    info = getattr(item, "_fixtureinfo", None)
    names = getattr(info, "argnames", None)
    return tuple(names) if names is not None else tuple(item.fixturenames)


def _params(item: pytest.Function) -> dict[str, Any]:
    """The test's arguments: direct ``parametrize`` values only, each a JSON value."""
    callspec = getattr(item, "callspec", None)
    given: dict[str, Any] = dict(callspec.params) if callspec is not None else {}
    defs = item._fixtureinfo.name2fixturedefs
    params: dict[str, Any] = {}
    refused = []
    for name in _argnames(item):
        fixturedefs = defs.get(name) or ()
        direct = name in given and all(
            getattr(d.func, "__name__", "") == "get_direct_param_fixture_func" for d in fixturedefs
        )
        if not direct:
            refused.append(name)
            continue
        try:
            json.dumps(given[name], allow_nan=False)
        except (TypeError, ValueError):
            raise _MarkerError(
                f"parameter {name}={given[name]!r:.100} is not a JSON value (str, int, float, bool, None, "
                "list, dict): a test under @pytest.mark.privsep gets its parameters as JSON"
            ) from None
        params[name] = given[name]
    if refused:
        raise _MarkerError(
            f"{item.name} runs in a confined child (@pytest.mark.{MARKER}), where fixtures are not "
            f"available; it asks for {', '.join(refused)}. Take only @pytest.mark.parametrize values "
            "(JSON), or take the `sandbox` fixture to run on the host and drive the sandbox from there"
        )
    return params


def _import_target(item: pytest.Function) -> tuple[Path, str, Path]:
    """The test file, the module name to import it as, and the directory to import it from."""
    path = item.path
    name = item.module.__name__ if item.module is not None else path.stem
    parts = name.split(".")
    stem = path.with_suffix("")
    if len(stem.parts) > len(parts) and stem.parts[-len(parts) :] == tuple(parts):
        return path, name, Path(*stem.parts[: -len(parts)])
    return path, path.stem, path.parent


def _confined_test(item: pytest.Function) -> tuple[_Options, _Test]:
    """The options of its sandbox and the test as the child's runner takes it; _MarkerError if wrong."""
    path, module, root = _import_target(item)
    qualname = item.originalname
    if item.cls is not None:
        qualname = f"{item.cls.__qualname__}.{qualname}"
    options = dataclasses.replace(_options(item), extra_path=(str(root),))
    return options, _Test(path, module, qualname, _params(item), options.python_path + options.extra_path)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the first confined test's forkserver now: its start overlaps the broker's import."""
    # What this session imports or reads by path (test modules, conftest.py, its configuration),
    # and the next session too: no sandbox of this process may write there (it would run
    # unconfined, as root for root). Confined tests write in their private /tmp, or in a
    # granted directory outside the project.
    protect(_test_directories(session))
    if session.config.option.collectonly:
        return
    first: _Options | None = None
    tests: list[_Test] = []
    for item in session.items:
        if not _is_confined(item):
            continue
        assert isinstance(item, pytest.Function)
        try:
            options, test = _confined_test(item)
        except _MarkerError:
            continue  # the test reports it at set-up
        first = options if first is None else first
        if options == first:
            tests.append(test)
    if first is None:
        return  # a session without confined tests starts nothing
    runners = session.config.stash[_RUNNERS]
    runners.start_early(first, tests)
    # Every preload is answered before any test runs: a host test's sandbox must not change a
    # file the unconfined forkserver has yet to import. The broker's import (what the first
    # confined test needs) overlaps the forkserver's work meanwhile.
    import privsep.sandbox  # noqa: F401, PLC0415 - the broker, imported while the forkserver preloads

    runners.preload_early()


def _test_directories(session: pytest.Session) -> list[str]:
    """The rootdir whole (what a later session may collect, its conftest.py files, packages'
    ``__init__.py``, its configuration), the ini file, and the directories of the collected test
    files and of the conftest.py files pytest loaded, wherever they are (each as named and as its
    real path: a test file may be a symlink)."""
    found: dict[str, None] = {str(session.config.rootpath): None}
    if session.config.inipath is not None:
        found[str(session.config.inipath)] = None
    files = {str(item.path) for item in session.items}
    for plugin in session.config.pluginmanager.get_plugins():
        name = getattr(plugin, "__file__", None)
        if isinstance(name, str) and os.path.basename(name) == "conftest.py":
            files.add(name)
    for name in sorted(files):
        found[os.path.dirname(os.path.abspath(name))] = None
        found[os.path.dirname(os.path.realpath(name))] = None
    return list(found)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if not _is_confined(item):
        return
    assert isinstance(item, pytest.Function)
    try:
        _options(item)
        _params(item)
    except _MarkerError as exc:
        problem = str(exc)
    else:
        return
    _fail_setup(problem)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not _is_confined(pyfuncitem):
        return None
    __tracebackhide__ = True
    path = pyfuncitem.path
    first = (pyfuncitem.reportinfo()[1] or 0) + 1
    runners = pyfuncitem.config.stash[_RUNNERS]
    try:
        options, test = _confined_test(pyfuncitem)
        made = None if runners.kept(options) else options.sandbox(start_method="forkserver")
    except (_MarkerError, PrivsepError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        _fail_setup(f"cannot run {pyfuncitem.name} confined: {problem}")
    try:
        report = runners.run(options, made, test)
    except ChildError as exc:  # the runner itself failed, or the child died (timeout, seccomp kill)
        raise ConfinedTestFailure(
            printable(exc.type_name, lines=True),
            printable(exc.message, lines=True),
            printable(exc.traceback, lines=True),
            path,
            first,
        ) from None
    except PrivsepError as exc:  # privsep could not start the child: not the test's failure
        problem = str(exc)
    else:
        _finish(_checked(report), path, first)
        return True
    _fail_setup(f"privsep could not run {pyfuncitem.name} confined: {problem}")


def _checked(report: object) -> dict[str, str]:
    """The child's report, validated: it crossed the boundary."""
    if (
        not isinstance(report, dict)
        or report.get("outcome") not in _OUTCOMES
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in report.items())
    ):
        raise ConfinedTestFailure(
            "RemoteProtocolError", "the confined test runner sent a report of the wrong shape", "", None
        )
    return {key: printable(value, lines=True) for key, value in report.items()}


def _finish(report: dict[str, str], path: Path, lineno: int) -> None:
    __tracebackhide__ = True
    # Printed here, the child's output lands in pytest's captured sections.
    if report.get("stdout"):
        print(report["stdout"], end="")
    if report.get("stderr"):
        print(report["stderr"], end="", file=sys.stderr)
    outcome = report["outcome"]
    if outcome == "skipped":  # reported at the test's location, as a skip marker's would be
        try:
            skip = pytest.skip.Exception(report.get("message", ""), _use_item_location=True)
        except TypeError:  # a pytest without that (internal) argument: reported here instead
            skip = pytest.skip.Exception(report.get("message", ""))
        raise skip
    if outcome == "xfailed":
        pytest.xfail(report.get("message", ""))
    if outcome == "failed":
        raise ConfinedTestFailure(
            report.get("type", "?"), report.get("message", ""), report.get("traceback", ""), path, lineno
        )


class ConfinedTestFailure(AssertionError):
    """A test body that ran confined failed: its exception's type, message and traceback, as text."""

    def __init__(
        self, type_name: str, message: str, traceback: str, path: Path | None, lineno: int = 0
    ) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.path = path
        self.lineno = lineno
        """Where to point when the traceback does not: the test's first line."""

    def longrepr(self, style: str = "auto") -> TerminalRepr | str:
        """The report's failure text: the child's own traceback, native style (``--tb=line``: one line)."""
        if self.traceback.startswith("Traceback"):
            header = "[privsep] the test body ran in a confined child; its traceback:\n"
        else:  # the child died (timeout, seccomp kill): the reason, then the tail of its stderr
            header = f"[privsep] the test body ran in a confined child, which ended with {self}\n"
        text = self.traceback or ""
        lines = [header, *text.splitlines(keepends=True)] if style != "line" else []
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lineno = self.lineno
        if self.path is not None:
            pattern = re.compile(rf'File "{re.escape(str(self.path))}", line (\d+)')
            found = pattern.findall(self.traceback)
            lineno = int(found[-1]) if found else self.lineno
        try:
            from _pytest._code.code import (  # noqa: PLC0415 - internal: fall back to text
                ReprExceptionInfo,
                ReprFileLocation,
                ReprTracebackNative,
            )
        except ImportError:
            return "".join(lines) or f"{self}\n"
        crash = ReprFileLocation(str(self.path or "?"), lineno, str(self))
        return ReprExceptionInfo(reprtraceback=ReprTracebackNative(lines), reprcrash=crash)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    failure = call.excinfo.value if call.excinfo is not None else None
    if isinstance(failure, ConfinedTestFailure) and report.failed:
        report.longrepr = failure.longrepr(str(item.config.getoption("tbstyle", "auto")))
    return report
