"""The privileged broker never imports a module the sandbox could have written.

``python -m privsep`` puts the working directory first on ``sys.path``; privsep imports some
modules only when it needs them, after the sandbox has run (reports, hints). A sandbox allowed
to write its working directory left ``shlex.py`` there, and the root broker imported it while
explaining the denial: code of the sandbox's choosing, run as root on the host.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import PYTHON, REPO

# The sandbox plants a module under every top-level name of the standard library, each of which
# leaves a mark (outside anything the sandbox may write) if it is ever imported; then it is
# denied something and fails, so that the broker reports and hints.
PLANT = """
import sys
for name in sys.stdlib_module_names:
    if name.isidentifier():
        with open(name + ".py", "w") as f:
            f.write(f"open({MARKS!r} + '/' + {name!r}, 'w').close()\\n")
try:
    open("/etc/shadow")
except OSError:
    pass
sys.exit(3)
"""


def test_python_m_privsep_imports_nothing_from_the_working_directory(
    shared_tmp: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    code = PLANT.replace("{MARKS!r}", repr(str(marks)))
    proc = subprocess.run(
        [
            str(PYTHON),
            "-m",
            "privsep",
            "run",
            "--policy",
            "python",
            "--allow-write",
            str(shared_tmp),
            "--",
            str(PYTHON),
            "-c",
            code,
        ],
        cwd=shared_tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    planted = sorted(p.name for p in shared_tmp.glob("*.py"))
    assert len(planted) > 200, planted  # the sandbox did write them
    assert sorted(p.name for p in marks.iterdir()) == []


def test_a_sandbox_host_that_grants_its_own_directory_is_refused(shared_tmp: Path) -> None:
    """A host run as ``python host.py`` has the script's directory first on sys.path."""
    host = shared_tmp / "host.py"
    host.write_text(
        "from privsep import Sandbox, PolicyError\n"
        "import sys\n"
        f"with Sandbox('minimal', allow_write=[{str(shared_tmp)!r}]) as sb:\n"
        "    try:\n"
        "        sb.run(['/bin/true'])\n"
        "    except PolicyError as exc:\n"
        "        print('refused:', exc)\n"
        "    else:\n"
        "        print('ran')\n"
    )
    proc = subprocess.run(
        [str(PYTHON), str(host)], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout.startswith("refused:"), (proc.stdout, proc.stderr)
    assert str(shared_tmp) in proc.stdout


_UNDER_A_BIND = r"""
import sys
from privsep.errors import PolicyError
from privsep.plan.importpath import check_grants
from privsep.plan.ownpaths import check_writes, guard

site, alias, log = sys.argv[1:4]
def refused(check, path):
    try:
        check([(path, ("write",))])
    except PolicyError as exc:
        return str(exc)
    return None

imports = lambda grants: check_grants(grants, path=[site])
guard(log, "the audit log", "move it")
print(repr([
    refused(imports, alias),
    refused(imports, alias + "/pkg"),
    refused(imports, alias + "/data"),
    refused(check_writes, alias),
    refused(check_writes, alias + "/data"),
]))
"""


def test_a_bind_mount_of_an_import_directory_or_of_the_audit_log_is_the_same_directory(
    tmp_path: Path,
) -> None:
    """Fresh-eyes audit 13: privsep's package bound at another path was granted (the check
    compared paths, as named and resolved, and a bind mount is neither), and the sandbox wrote
    into the package the root broker imports from later. Run in a mount namespace of its own."""
    site, alias = tmp_path / "site", tmp_path / "alias"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("")
    (site / "data").mkdir()
    (site / "audit.log").write_text("")
    alias.mkdir()
    script = tmp_path / "check.py"
    script.write_text(_UNDER_A_BIND)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$2" && exec "$3" "$4" "$1" "$2" "$1/audit.log"',
         "sh", str(site), str(alias), str(PYTHON), str(script)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    is_site, in_pkg, in_data, is_logs_dir, in_data_again = eval(proc.stdout)  # noqa: S307 - our own repr
    assert is_site is not None and f"it is {site}" in is_site
    assert in_pkg is not None and f"inside {site}/pkg" in in_pkg
    assert in_data is None  # a plain data directory beside the modules stays grantable
    assert is_logs_dir is not None and "holds the audit log" in is_logs_dir
    assert in_data_again is None
