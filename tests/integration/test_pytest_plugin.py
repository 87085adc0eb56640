"""The pytest plugin and privsep.testing, as a project using them sees them.

Each test writes a small project into a world-readable directory and runs
``python -m pytest`` on it in a subprocess: the plugin comes in through its
``pytest11`` entry point, exactly as in any project that installs privsep.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from privsep import DeniedError
from privsep.testing import assert_confined, assert_denied, assert_not_visible
from tests.conftest import PYTHON, REPO, as_nonroot

RunPytest = Callable[..., subprocess.CompletedProcess[str]]

HEADER = """\
import os

import pytest

from privsep import DeniedError, client
from privsep.testing import assert_confined, assert_denied, assert_not_visible

HERE = os.path.dirname(os.path.abspath(__file__))
"""


def write(project: Path, name: str, body: str) -> Path:
    path = project / name
    path.write_text(HEADER + textwrap.dedent(body))
    path.chmod(0o644)
    return path


def outcomes(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each test's outcome, from ``pytest -v``'s lines: {"test_x": "PASSED", "test_y[1]": "FAILED"}."""
    found = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^\S+?::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


@pytest.fixture
def project(shared_tmp: Path) -> Path:
    """A project directory: a data file the tests grant, nothing else."""
    (shared_tmp / "data").mkdir(mode=0o755)
    (shared_tmp / "data" / "greeting.txt").write_text("hello from the host\n")
    (shared_tmp / "data" / "greeting.txt").chmod(0o644)
    return shared_tmp


@pytest.fixture
def run_pytest(project: Path) -> RunPytest:
    """``run_pytest(*args, user="root")``: pytest on the project, in a subprocess, as that user."""

    def run(*args: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        argv = [str(PYTHON), "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", *args]
        if user == "nonroot":  # as_nonroot starts from the checkout: come back to the project
            argv = as_nonroot(["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(project), *argv])
        return subprocess.run(
            argv,
            cwd=REPO if user == "nonroot" else project,
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def test_a_marked_test_runs_confined_and_reads_a_granted_file(
    project: Path, run_pytest: RunPytest, broker_user: str
) -> None:
    write(
        project,
        "test_inside.py",
        """
        @pytest.mark.privsep(allow_read=["data"])
        def test_confined_and_reads_the_grant():
            assert_confined()
            with client.open(os.path.join(HERE, "data", "greeting.txt")) as f:
                assert f.read() == "hello from the host\\n"
            print("printed inside the child")

        @pytest.mark.privsep
        @pytest.mark.parametrize(("n", "spec"), [(1, {"k": [1, None]}), (2, {"k": []})])
        def test_parameters_are_passed_as_json(n, spec):
            assert_confined()
            assert n in (1, 2) and isinstance(spec["k"], list)

        @pytest.mark.privsep
        class TestInAClass:
            def test_method(self):
                assert os.getuid() == 65534

        @pytest.mark.privsep
        def test_skip_inside():
            pytest.skip("skipped from inside")

        def test_an_unmarked_test_runs_on_the_host():
            assert "PRIVSEP_FD" not in os.environ
            with pytest.raises(AssertionError, match="not confined"):
                assert_confined()
        """,
    )
    proc = run_pytest(user=broker_user)
    assert outcomes(proc) == {
        "test_confined_and_reads_the_grant": "PASSED",
        "test_parameters_are_passed_as_json[1-spec0]": "PASSED",
        "test_parameters_are_passed_as_json[2-spec1]": "PASSED",
        "TestInAClass::test_method": "PASSED",
        "test_skip_inside": "SKIPPED",
        "test_an_unmarked_test_runs_on_the_host": "PASSED",
    }, proc.stdout + proc.stderr
    assert proc.returncode == 0
    assert re.search(r"^plugins: .*privsep-", proc.stdout, re.MULTILINE), "not loaded by its entry point"
    assert "printed inside the child" in proc.stdout  # the child's output, shown as captured output
    assert re.search(r"SKIPPED \[1\] test_inside\.py:\d+: skipped from inside", proc.stdout)


def test_an_assertion_failing_inside_is_reported_with_the_childs_message(
    project: Path, run_pytest: RunPytest
) -> None:
    write(
        project,
        "test_fails.py",
        """
        @pytest.mark.privsep
        def test_compares_inside():
            seen = {"uid": os.getuid()}
            assert seen == {"uid": 0}

        @pytest.mark.privsep
        def test_raises_inside():
            raise ValueError("not a number: x")

        @pytest.mark.privsep(timeout=1)
        def test_runs_out_of_time():
            import time

            time.sleep(30)
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {
        "test_compares_inside": "FAILED",
        "test_raises_inside": "FAILED",
        "test_runs_out_of_time": "FAILED",
    }, proc.stdout + proc.stderr
    assert proc.returncode == 1
    out = proc.stdout
    # Rewritten in the child as on the host: the values that differed, the source line and its number.
    assert (
        "FAILED test_fails.py::test_compares_inside - AssertionError: assert {'uid': 65534} == {'uid': 0}"
        in out
    )
    assert re.search(r'File "[^"]*test_fails\.py", line \d+, in test_compares_inside\n\s+assert seen ==', out)
    assert "FAILED test_fails.py::test_raises_inside - ValueError: not a number: x" in out
    assert "the test body ran in a confined child, which ended with no result (timeout)" in out
    assert "pytest_plugin.py" not in out and "_pytest_child.py" not in out  # the test's frames only


def test_a_denied_open_of_etc_shadow_is_asserted_with_assert_denied(
    project: Path, run_pytest: RunPytest
) -> None:
    write(
        project,
        "test_denied.py",
        """
        @pytest.mark.privsep(allow_read=["data"])
        def test_shadow_is_denied_by_the_broker():
            err = assert_denied(client.open, "/etc/shadow")
            assert isinstance(err, DeniedError)
            assert "--allow-read=/etc/shadow" in str(err)
            assert_not_visible("/etc/shadow")  # nor can the child see it by itself

        @pytest.mark.privsep
        def test_a_kernel_refusal_is_a_denial_too():
            # (Not setuid(0): root is not mapped in the sandbox's user namespace, so that is EINVAL.)
            err = assert_denied(os.setgroups, [])
            assert not isinstance(err, DeniedError) and err.errno == 1

        @pytest.mark.privsep(allow_read=["data"])
        def test_what_is_allowed_fails_assert_denied():
            assert_denied(client.open, os.path.join(HERE, "data", "greeting.txt"))
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {
        "test_shadow_is_denied_by_the_broker": "PASSED",
        "test_a_kernel_refusal_is_a_denial_too": "PASSED",
        "test_what_is_allowed_fails_assert_denied": "FAILED",
    }, proc.stdout + proc.stderr
    assert re.search(
        r"AssertionError: privsep\.client\.open\('[^']*greeting\.txt'\) was allowed", proc.stdout
    )


def test_the_sandbox_fixture_runs_a_command_under_the_markers_policy(
    project: Path, run_pytest: RunPytest
) -> None:
    write(
        project,
        "test_fixture.py",
        """
        @pytest.mark.privsep(allow_read=["data"], timeout=20)
        def test_run_and_call(sandbox):
            assert "PRIVSEP_FD" not in os.environ  # a test taking `sandbox` runs on the host
            assert sandbox.timeout == 20
            result = sandbox.run(["/bin/cat", os.path.join(HERE, "data", "greeting.txt")])
            # Not in the view: the broker serves it (transparent brokering), as it would client.open.
            assert (result.returncode, result.stdout) == (0, b"hello from the host\\n")
            result = sandbox.run(["/bin/sh", "-c", "id -u; ls /"])
            assert result.returncode == 0 and result.stdout.startswith(b"65534\\n")
            assert sandbox.call("os:getuid") == 65534

        def test_without_a_marker(sandbox):
            assert sandbox.call("os:getuid") == 65534
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {"test_run_and_call": "PASSED", "test_without_a_marker": "PASSED"}, (
        proc.stdout + proc.stderr
    )


def test_the_privsep_policy_option_sets_the_default_policy(project: Path, run_pytest: RunPytest) -> None:
    policy = project / "tagged.toml"
    policy.write_text('extends = "python"\n[env]\nset = { PROJECT_TAG = "from-the-option" }\n')
    policy.chmod(0o644)
    write(
        project,
        "test_policy.py",
        """
        @pytest.mark.privsep
        def test_body_sees_the_policy():
            assert os.environ.get("PROJECT_TAG") == "from-the-option"

        @pytest.mark.privsep(policy="python")
        def test_the_marker_wins():
            assert "PROJECT_TAG" not in os.environ

        def test_fixture_sees_the_policy(sandbox):
            assert sandbox.call("os:getenv", "PROJECT_TAG") == "from-the-option"
        """,
    )
    proc = run_pytest(f"--privsep-policy={policy}")
    assert outcomes(proc) == {
        "test_body_sees_the_policy": "PASSED",
        "test_the_marker_wins": "PASSED",
        "test_fixture_sees_the_policy": "PASSED",
    }, proc.stdout + proc.stderr
    default = run_pytest()  # "python": no tag
    assert outcomes(default) == {
        "test_body_sees_the_policy": "FAILED",
        "test_the_marker_wins": "PASSED",
        "test_fixture_sees_the_policy": "FAILED",
    }, default.stdout + default.stderr


def test_what_cannot_cross_into_the_child_is_a_clear_error(project: Path, run_pytest: RunPytest) -> None:
    write(
        project,
        "test_misuse.py",
        """
        @pytest.mark.privsep
        def test_asks_for_a_fixture(tmp_path):
            pass

        @pytest.mark.privsep
        @pytest.mark.parametrize("value", [object()])
        def test_a_parameter_that_is_not_json(value):
            pass

        @pytest.mark.privsep(allow_reed=["/srv"])
        def test_a_misspelt_option():
            pass

        @pytest.mark.privsep(policy="no-such-policy")
        def test_an_unknown_policy():
            pass
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {
        "test_asks_for_a_fixture": "ERROR",
        "test_a_parameter_that_is_not_json[value0]": "ERROR",
        "test_a_misspelt_option": "ERROR",
        "test_an_unknown_policy": "FAILED",
    }, proc.stdout + proc.stderr
    out = proc.stdout
    assert "fixtures are not available; it asks for tmp_path" in out
    assert "is not a JSON value" in out
    assert "unknown option(s) allow_reed" in out
    assert "cannot run test_an_unknown_policy confined:" in out


# -- the process model: one forkserver per set of options, a fresh fork per test ----------


def test_each_test_is_a_fresh_fork_of_a_forkserver_that_imported_the_module_unconfined(
    project: Path, run_pytest: RunPytest, broker_user: str
) -> None:
    write(
        project,
        "test_fresh.py",
        """
        # Module-level code runs in the forkserver, unconfined (see the plugin's docstring).
        IMPORTED_CONFINED = "PRIVSEP_FD" in os.environ
        SEEN = []

        @pytest.mark.privsep
        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_nothing_of_an_earlier_test_is_left(n):
            assert_confined()
            assert not IMPORTED_CONFINED
            assert SEEN == [] and not os.path.exists("/tmp/left-behind")
            SEEN.append(n)
            open("/tmp/left-behind", "w").close()
            print(f"test {n} ran")

        @pytest.mark.privsep(allow_read=["data"])
        def test_other_options_another_sandbox():
            # Its forkserver starts after confined tests ran: it preloads nothing, and the
            # child imports the module itself, confined.
            assert_confined()
            assert IMPORTED_CONFINED and SEEN == []
            with client.open(os.path.join(HERE, "data", "greeting.txt")) as f:
                assert f.read() == "hello from the host\\n"

        @pytest.mark.privsep
        def test_a_rewritten_assert_in_a_preloaded_module():
            assert SEEN == [4]
        """,
    )
    proc = run_pytest(user=broker_user)
    assert outcomes(proc) == {
        "test_nothing_of_an_earlier_test_is_left[1]": "PASSED",
        "test_nothing_of_an_earlier_test_is_left[2]": "PASSED",
        "test_nothing_of_an_earlier_test_is_left[3]": "PASSED",
        "test_other_options_another_sandbox": "PASSED",
        "test_a_rewritten_assert_in_a_preloaded_module": "FAILED",
    }, proc.stdout + proc.stderr
    assert all(f"test {n} ran" in proc.stdout for n in (1, 2, 3))
    assert re.search(r"AssertionError: assert \[\] == \[4\]", proc.stdout)


def test_the_first_confined_tests_forkserver_starts_when_collection_ends(
    project: Path, run_pytest: RunPytest
) -> None:
    """Started before any test runs (its start overlaps the broker's import); none without a confined test."""
    finder = """
        IMPORTED_CONFINED = "PRIVSEP_FD" in os.environ

        def forkservers():
            found = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read().split(b"\\0")
                    with open(f"/proc/{pid}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid == os.getpid() and b"privsep.forkserver" in argv:
                    found.append(pid)
            return found
        """
    write(
        project,
        "test_early.py",
        finder
        + """
        def test_0_unmarked_runs_first():
            assert len(forkservers()) == 1

        @pytest.mark.privsep
        def test_1_marked():
            assert_confined()
            assert not IMPORTED_CONFINED  # the early forkserver imported the module
        """,
    )
    write(
        project,
        "test_none.py",
        finder
        + """
        def test_unmarked_alone():
            assert forkservers() == []
        """,
    )
    proc = run_pytest("test_early.py")
    assert outcomes(proc) == {"test_0_unmarked_runs_first": "PASSED", "test_1_marked": "PASSED"}, (
        proc.stdout + proc.stderr
    )
    proc = run_pytest("test_none.py")
    assert outcomes(proc) == {"test_unmarked_alone": "PASSED"}, proc.stdout + proc.stderr


def test_a_granted_directory_made_anew_for_each_test_is_the_one_each_test_is_served(
    project: Path, run_pytest: RunPytest
) -> None:
    write(
        project,
        "test_made_anew.py",
        """
        import shutil

        FRESH = os.path.join(HERE, "fresh")

        @pytest.fixture(autouse=True)
        def made_anew(request):
            shutil.rmtree(FRESH, ignore_errors=True)
            os.mkdir(FRESH)
            os.chmod(FRESH, 0o755)
            with open(os.path.join(FRESH, "name.txt"), "w") as f:
                f.write(request.node.name)
            os.chmod(os.path.join(FRESH, "name.txt"), 0o644)

        @pytest.mark.privsep(allow_read=["fresh"])
        @pytest.mark.parametrize("n", [1, 2])
        def test_served_this_tests_directory(n):
            with client.open(os.path.join(FRESH, "name.txt")) as f:  # the broker serves it
                assert f.read() == f"test_served_this_tests_directory[{n}]"
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {
        "test_served_this_tests_directory[1]": "PASSED",
        "test_served_this_tests_directory[2]": "PASSED",
    }, proc.stdout + proc.stderr


def test_a_module_the_forkserver_cannot_import_is_imported_by_each_child(
    project: Path, run_pytest: RunPytest
) -> None:
    write(
        project,
        "test_unpreloadable.py",
        """
        # Only the forkserver has neither: pytest's process has COLUMNS (run_pytest), the child PRIVSEP_FD.
        if "COLUMNS" not in os.environ and "PRIVSEP_FD" not in os.environ:
            raise RuntimeError("not importable in the forkserver")
        IMPORTED_CONFINED = "PRIVSEP_FD" in os.environ

        @pytest.mark.privsep
        @pytest.mark.parametrize("n", [1, 2])
        def test_imported_by_the_child(n):
            assert_confined()
            assert IMPORTED_CONFINED
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {
        "test_imported_by_the_child[1]": "PASSED",
        "test_imported_by_the_child[2]": "PASSED",
    }, proc.stdout + proc.stderr
    assert "not importable in the forkserver" not in proc.stdout + proc.stderr


def test_without_a_forkserver_tests_run_confined_as_before_and_a_warning_says_why(
    project: Path, run_pytest: RunPytest
) -> None:
    conftest = project / "conftest.py"
    conftest.write_text(
        textwrap.dedent(
            """
            import errno
            import subprocess
            import types

            import privsep.forkserver

            def refuse(*args, **kwargs):
                raise OSError(errno.EAGAIN, "refused by this project's conftest")

            # The forkserver's Popen fails, and no one else's.
            privsep.forkserver.subprocess = types.SimpleNamespace(Popen=refuse, DEVNULL=subprocess.DEVNULL)
            """
        )
    )
    conftest.chmod(0o644)
    write(
        project,
        "test_fallback.py",
        """
        IMPORTED_CONFINED = "PRIVSEP_FD" in os.environ

        @pytest.mark.privsep
        @pytest.mark.parametrize("n", [1, 2])
        def test_runs_confined(n):
            assert_confined()
            assert IMPORTED_CONFINED  # a fresh interpreter, which imported the module itself
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {"test_runs_confined[1]": "PASSED", "test_runs_confined[2]": "PASSED"}, (
        proc.stdout + proc.stderr
    )
    assert (
        "privsep: the forkserver for @pytest.mark.privsep tests could not start (cannot start the "
        "forkserver: refused by this project's conftest); they run confined as before" in proc.stdout
    )
    assert proc.stdout.count("could not start") == 1


def test_a_forkserver_that_died_is_replaced_before_the_next_test(
    project: Path, run_pytest: RunPytest
) -> None:
    write(
        project,
        "test_dies.py",
        """
        import signal
        import time

        @pytest.mark.privsep
        def test_1_before():
            assert_confined()

        def test_2_kill_the_forkserver():
            killed = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        comm, rest = f.read().rsplit(")", 1)
                except OSError:
                    continue
                if comm.endswith("(privsep-forksrv") and int(rest.split()[1]) == os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(pid)
            assert len(killed) == 1
            for _ in range(500):
                try:
                    with open(f"/proc/{killed[0]}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except FileNotFoundError:
                    break
                time.sleep(0.01)

        @pytest.mark.privsep
        def test_3_after():
            assert_confined()
        """,
    )
    proc = run_pytest()
    assert outcomes(proc) == {
        "test_1_before": "PASSED",
        "test_2_kill_the_forkserver": "PASSED",
        "test_3_after": "PASSED",
    }, proc.stdout + proc.stderr


# -- privsep.testing on the host: every check fails, and says which ----------


def test_assert_confined_names_what_is_not_confined_on_the_host() -> None:
    with pytest.raises(AssertionError) as info:
        assert_confined()
    message = str(info.value)
    assert "NoNewPrivs is 0, want 1" in message and "Seccomp is 0, want 2" in message
    assert "PRIVSEP_FD is not set" in message
    if os.geteuid() == 0:
        assert "CapEff is" in message and "Uid (real, effective, saved, filesystem) is 0 0 0 0" in message


def test_assert_denied_returns_the_refusal_and_refuses_the_rest(shared_tmp: Path) -> None:
    def refuse() -> None:
        raise DeniedError("open('/x', 'r'): no rule grants /x")

    err = assert_denied(refuse)
    assert isinstance(err, DeniedError) and "no rule grants" in str(err)
    kernel = assert_denied(os.kill, 1, 0) if os.geteuid() != 0 else assert_denied(_raise_eacces)
    assert isinstance(kernel, PermissionError) and not isinstance(kernel, DeniedError)
    with pytest.raises(AssertionError, match=r"was allowed \(it returned <_io\.TextIOWrapper"):
        assert_denied(open, REPO / "README.md")
    with pytest.raises(AssertionError, match="FileNotFoundError, not a denial: the path is not in"):
        assert_denied(open, shared_tmp / "missing")
    with pytest.raises(
        AssertionError,
        match=r"int\(.bad.\) raised ValueError, not a denial \(PermissionError\): invalid literal",
    ):
        assert_denied(int, "bad")


def _raise_eacces() -> None:
    raise OSError(13, "Permission denied")  # Python makes it a PermissionError


def test_assert_not_visible(shared_tmp: Path) -> None:
    assert_not_visible(shared_tmp / "missing")
    assert_not_visible(REPO / "README.md" / "below-a-file")
    with pytest.raises(AssertionError, match="is visible in this process's view \\(a directory\\)"):
        assert_not_visible(shared_tmp)


@pytest.mark.parametrize("import_mode", ["importlib", "prepend"])
def test_what_a_confined_test_writes_never_runs_in_the_unconfined_forkserver(
    project: Path, run_pytest: RunPytest, tmp_path: Path, import_mode: str
) -> None:
    """A fresh-eyes audit (7th) found the plugin's forkserver (unconfined, root) importing a test
    module once before that module's first confined test: after earlier confined tests had run.
    One with a write grant on the test directory rewrote a later test file, or left a
    ``colorsys.py`` beside it for the forkserver (which put the directory on its own sys.path)
    to import; either ran as root on the host."""
    tests = project / "the-suite"  # not on sys.path, and no module name, under --import-mode=importlib
    tests.mkdir(mode=0o755)
    marks = tmp_path / "marks"  # not granted: only an unconfined process can leave a mark
    marks.mkdir()
    payload = f"import os\nopen({str(marks)!r} + '/' + str(os.getpid()), 'w').close()\n"
    write(
        tests,
        "test_a_writes.py",
        f"""
        @pytest.mark.privsep(allow_write=[HERE])
        def test_writes_beside_itself():
            with open(os.path.join(HERE, "test_b_later.py")) as f:
                source = f.read()
            with open(os.path.join(HERE, "test_b_later.py"), "w") as f:
                f.write({payload!r} + source)
            with open(os.path.join(HERE, "colorsys.py"), "w") as f:
                f.write({payload!r} + "del __import__('sys').modules['colorsys']\\n")
        """,
    )
    write(
        tests,
        "test_b_later.py",
        """
        @pytest.mark.privsep
        def test_imports_colorsys():
            import colorsys
            assert colorsys.rgb_to_hsv(0, 0, 0)[2] == 0
        """,
    )
    files = ("the-suite/test_a_writes.py", "the-suite/test_b_later.py")
    proc = run_pytest(f"--import-mode={import_mode}", *files)
    assert sorted(p.name for p in marks.iterdir()) == [], proc.stdout[-3000:]
    # A test directory is what pytest imports by path, in this session and the next (its
    # conftest.py too): a write grant there is refused at planning, in either import mode.
    assert outcomes(proc)["test_writes_beside_itself"] == "FAILED", proc.stdout[-3000:]
    assert f"a grant to write {tests} is refused" in proc.stdout.replace("\n", ""), proc.stdout[-3000:]
    assert outcomes(proc)["test_imports_colorsys"] == "PASSED", proc.stdout[-3000:]


def test_the_forkserver_has_imported_every_module_before_any_test_runs(
    project: Path, run_pytest: RunPytest
) -> None:
    """The 8th audit raced the preload: a host test ran (its sandbox changing a test file) while
    the forkserver was still importing the modules it had been asked for. Now every preload is
    answered before the first test: what the forkserver imported is what pytest collected."""
    write(
        project,
        "test_1_host.py",
        """
        def test_rewrites_a_later_module_on_the_host():
            path = os.path.join(HERE, "test_3_victim.py")
            with open(path) as f:
                source = f.read()
            with open(path, "w") as f:
                f.write(source.replace('VERSION = "as collected"', 'VERSION = "rewritten"'))
        """,
    )
    write(
        project,
        "test_2_slow.py",
        """
        import time
        time.sleep(1.5)  # a module slow to import: the forkserver is busy with it

        @pytest.mark.privsep
        def test_slow():
            pass
        """,
    )
    write(
        project,
        "test_3_victim.py",
        """
        VERSION = "as collected"

        @pytest.mark.privsep
        def test_sees_what_pytest_collected():
            assert VERSION == "as " + "collected"
        """,
    )
    proc = run_pytest("test_1_host.py", "test_2_slow.py", "test_3_victim.py")
    assert outcomes(proc) == {
        "test_rewrites_a_later_module_on_the_host": "PASSED",
        "test_slow": "PASSED",
        "test_sees_what_pytest_collected": "PASSED",
    }, proc.stdout[-3000:]


def test_no_sandbox_of_a_session_may_write_under_its_rootdir(project: Path, run_pytest: RunPytest) -> None:
    """The 9th audit: a confined test granted ``data/`` (no tests there) left ``data/conftest.py``,
    and appended ``addopts`` to pyproject.toml; the next session ran it on the host, as root."""
    (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (project / "tests").mkdir(mode=0o755)
    write(
        project / "tests",
        "test_data.py",
        """
        @pytest.mark.privsep(allow_write=[os.path.join(HERE, "..", "data")])
        def test_writes_data():
            pass

        @pytest.mark.privsep(allow_write=[os.path.join(HERE, "..", "pyproject.toml")])
        def test_writes_the_configuration():
            pass
        """,
    )
    proc = run_pytest("tests/test_data.py")
    assert outcomes(proc) == {"test_writes_data": "FAILED", "test_writes_the_configuration": "FAILED"}, (
        proc.stdout[-3000:]
    )
    assert proc.stdout.count("is refused") >= 2, proc.stdout[-3000:]
