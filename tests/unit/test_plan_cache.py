"""The plan cache's key and facts, for what a test cannot change from outside: privsep's own
version and files, the kernel, the Landlock ABI, the libseccomp a filter was compiled with.
(tests/integration/test_plan_cache.py changes the rest where a user would.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from privsep import _hostfacts as host
from privsep.plan import cache
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy

INPUTS = ["minimal", [], [], [], [], [], [], {}]


def test_the_key_is_the_same_for_the_same_inputs_here_and_differs_with_them() -> None:
    assert cache.key(INPUTS) == cache.key(INPUTS)
    assert cache.key(INPUTS) != cache.key(["python", *INPUTS[1:]])


def test_a_new_privsep_version_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache.key(INPUTS)
    monkeypatch.setattr(cache, "__version__", "999.0")
    assert cache.key(INPUTS) != before


def test_any_change_to_privsep_files_changes_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package = tmp_path / "privsep"
    (package / "plan").mkdir(parents=True)
    source = package / "plan" / "view.py"
    source.write_text("x = 1\n")
    (package / "__pycache__").mkdir()
    monkeypatch.setattr(cache, "_PACKAGE", str(package))
    before = cache.key(INPUTS)
    (package / "__pycache__" / "view.cpython-311.pyc").write_bytes(b"bytecode is not source")
    assert cache.key(INPUTS) == before
    source.write_text("x = 2\n")  # the same size: its ctime and mtime tell
    edited = cache.key(INPUTS)
    assert edited != before
    (package / "policies.toml").write_text("")
    assert cache.key(INPUTS) != edited


def test_another_kernel_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache.key(INPUTS)
    real = os.uname()
    other = os.uname_result((real.sysname, real.nodename, real.release + "-next", real.version, real.machine))
    monkeypatch.setattr(os, "uname", lambda: other)
    assert cache.key(INPUTS) != before


def test_another_user_or_directory_changes_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = cache.key(INPUTS)
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    assert cache.key(INPUTS) != before
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert cache.key(INPUTS) != before


def _facts() -> list[host.Fact]:
    with host.recording() as seen:
        make_plan(load_policy("minimal"), ["/bin/true"])
        cache.note_libraries()
    assert seen.complete
    return seen.facts


def test_an_upgraded_pydantic_makes_the_facts_fail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    facts = _facts()
    import pydantic

    paths = [args[0] for kind, args, _ in facts if kind == "file"]
    assert pydantic.__file__ in paths
    replaced = tmp_path / "__init__.py"  # pip writes a new file: another inode
    replaced.write_bytes(Path(pydantic.__file__).read_bytes())
    read, projection = host._KINDS["file"]

    def upgraded(path: str) -> object:
        return read(str(replaced) if path == pydantic.__file__ else path)

    monkeypatch.setitem(host._KINDS, "file", (upgraded, projection))
    assert not host.hold(facts)


def test_a_plan_records_what_it_read_of_the_host_and_it_holds() -> None:
    facts = _facts()
    kinds = {kind for kind, _, _ in facts}
    assert {"lstat", "readlink", "landlock-abi", "file", "env"} <= kinds
    assert host.hold(facts)


def test_another_landlock_abi_makes_the_facts_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _facts()
    read, observed = host._KINDS["landlock-abi"]
    monkeypatch.setitem(host._KINDS, "landlock-abi", (lambda: read() + 1, observed))
    assert not host.hold(facts)


def test_another_libseccomp_makes_the_facts_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _facts()
    libraries = [args[0] for kind, args, _ in facts if kind == "file"]
    assert any("libseccomp" in path for path in libraries)
    assert "/etc/ld.so.cache" in libraries
    fields = ("st_mode", "st_uid", "st_gid", "st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")

    def stat_as(bump: int) -> Callable[[str], SimpleNamespace]:
        def read(path: str) -> SimpleNamespace:
            st = SimpleNamespace(**{name: getattr(os.stat(path), name) for name in fields})
            if "libseccomp" in path:  # rewritten in place: the same inode, new contents
                st.st_mtime_ns += bump
                st.st_ctime_ns += bump
            return st

        return read

    projection = host._KINDS["file"][1]
    monkeypatch.setitem(host._KINDS, "file", (stat_as(0), projection))
    assert host.hold(facts)  # the stand-in reads what os.stat does
    monkeypatch.setitem(host._KINDS, "file", (stat_as(1), projection))
    assert not host.hold(facts)


@pytest.mark.parametrize(
    "facts",
    [None, "facts", [["no such kind", [], 1]], [["lstat", "/", []]], [["lstat"]], [[1, 2, 3]]],
)
def test_malformed_facts_never_hold_and_never_raise(facts: object) -> None:
    assert not host.hold(facts)
