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


#: What the scripts run in a mount namespace of their own share: refused(check, path) is the
#: refusal's text, or None.
_REFUSED = r"""
import sys
from privsep.errors import PolicyError
from privsep.plan.importpath import check_grants
from privsep.plan.ownpaths import check_writes, guard

def refused(check, path):
    try:
        check([(path, ("write",))])
    except PolicyError as exc:
        return str(exc)
    return None
"""

_UNDER_A_BIND = (
    _REFUSED
    + r"""
site, alias, log = sys.argv[1:4]

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
)


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


def test_a_mount_below_a_grant_or_an_overlays_layer_is_seen(tmp_path: Path) -> None:
    """Fresh-eyes audit 14: a grant of a directory with a bind of an import directory (or of the
    audit log's directory) mounted inside it was accepted, and the view binds recursively, so the
    sandbox wrote into privsep's package; an overlay's lower or upper directory is another name
    of the merged directory the broker imports from. Run in a mount namespace of its own."""
    site, granted, audit = tmp_path / "site", tmp_path / "granted", tmp_path / "audit"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("")
    (granted / "alias").mkdir(parents=True)
    (granted / "logs").mkdir()
    audit.mkdir()
    (audit / "audit.log").write_text("")
    lower, upper, work, merged = (tmp_path / name for name in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "mod.py").write_text("")
    (lower / "data").mkdir()
    script = tmp_path / "check.py"
    script.write_text(_BELOW_AND_LAYERS)
    setup = (
        'mount --bind "$1" "$2/alias" && mount --bind "$3" "$2/logs" && '
        'mount -t overlay overlay -o "lowerdir=$4,upperdir=$5,workdir=$6" "$7" && exec "$8" "$9" "$@"'
    )
    args = [site, granted, audit, lower, upper, work, merged, PYTHON, script]
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = eval(proc.stdout)  # noqa: S307 - our own repr
    assert results["granted"] is not None and f"it holds {site}" in results["granted"]
    assert results["granted (log)"] is not None and "holds the audit log" in results["granted (log)"]
    assert results["lower"] is not None and f"holds {merged}" in results["lower"]
    assert results["upper"] is not None and f"holds {merged}" in results["upper"]
    assert results["lower/mod.py"] is not None and f"inside {merged}/mod.py" in results["lower/mod.py"]
    assert results["lower/data"] is None  # a data directory in a layer stays grantable


_BELOW_AND_LAYERS = (
    _REFUSED
    + r"""
site, granted, audit, lower, upper, work, merged = sys.argv[1:8]

imports = lambda grants: check_grants(grants, path=[site, merged])
guard(audit + "/audit.log", "the audit log", "move it")
print(repr({
    "granted": refused(imports, granted),
    "granted (log)": refused(check_writes, granted),
    "lower": refused(imports, lower),
    "upper": refused(imports, upper),
    "lower/mod.py": refused(imports, lower + "/mod.py"),
    "lower/data": refused(imports, lower + "/data"),
}))
"""
)


def _in_namespace(setup: str, script: Path, base: Path) -> dict[str, str | None]:
    """Run ``setup`` (sh; $1 is ``base``, $PY the interpreter) in a mount namespace of its own,
    then ``script``, which prints a dict of the refusals; that dict."""
    namespace = ["unshare", "--mount", "--propagation", "private"]
    proc = subprocess.run(
        [*namespace, "sh", "-c", setup, "sh", str(base), str(script), str(base)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        env={"PY": str(PYTHON), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results: dict[str, str | None] = eval(proc.stdout)  # noqa: S307 - our own repr
    return results


def test_overlays_of_every_form_and_a_moved_bind_are_seen(tmp_path: Path) -> None:
    """Fresh-eyes audit 15, in a mount namespace of its own: an overlay on the import path whose
    lower layer was named with an escaped colon, or added with the new mount API's
    ``lowerdir+=``, let its lower layer be granted; its merged directory, granted while its
    upper directory was on the import path, wrote there; and a bind staged, then moved over a
    later mount, was taken for the hidden mount beneath it, so a grant inside it wrote into
    privsep's package. A layer named by a relative path refuses every write grant."""
    b = tmp_path
    for name in ("lo:w", "u", "w", "m", "n/lower", "n/up", "n/wk", "n/merged", "site/privsep", "p", "r/l"):
        (b / name).mkdir(parents=True)
    for name in ("r/u", "r/w", "r/m", "stage"):
        (b / name).mkdir(parents=True)
    (b / "site" / "privsep" / "hints.py").write_text("")
    (b / "p" / "privsep").mkdir()
    script = tmp_path / "check.py"
    script.write_text(_OVERLAY_FORMS)
    setup = (
        'B="$1"; shift; '
        'mount -t overlay overlay -o "lowerdir=$B/lo\\:w,upperdir=$B/u,workdir=$B/w" "$B/m" && '
        '"$PY" "$B/fsmount.py" "$B/n" && '
        'mount --bind "$B/site" "$B/stage" && mount -t tmpfs x "$B/p/privsep" && '
        'mount --move "$B/stage" "$B/p" && exec "$PY" "$@"'
    )
    (b / "fsmount.py").write_text(_FSMOUNT)
    results = _in_namespace(setup, script, b)
    assert results["escaped colon: lower"] is not None and f"holds {b}/m" in results["escaped colon: lower"]
    assert results["lowerdir+: lower"] is not None and f"holds {b}/n/merged" in results["lowerdir+: lower"]
    assert results["merged, upper on the path"] is not None, results
    assert results["inside a moved bind"] is not None and "privsep" in results["inside a moved bind"]
    assert results["relative layer"] is not None and "relative path" in results["relative layer"]
    assert results["elsewhere"] is None  # a plain directory stays grantable


_FSMOUNT = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def call(*args):
    if libc.syscall(*args) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
base = sys.argv[1].encode()
fs = libc.syscall(430, b"overlay", 0)  # fsopen
for key, value in [(b"lowerdir+", b"/lower"), (b"upperdir", b"/up"), (b"workdir", b"/wk")]:
    call(431, fs, 1, key, base + value, 0)  # fsconfig FSCONFIG_SET_STRING
call(431, fs, 6, None, None, 0)  # FSCONFIG_CMD_CREATE
mnt = libc.syscall(432, fs, 0, 0)  # fsmount
call(429, mnt, b"", -100, base + b"/merged", 4)  # move_mount, MOVE_MOUNT_F_EMPTY_PATH
"""

_OVERLAY_FORMS = (
    _REFUSED
    + r"""
import os, subprocess
b = sys.argv[1]
def imports(*path):
    return lambda grants: check_grants(grants, path=list(path))

results = {
    "escaped colon: lower": refused(imports(b + "/m"), b + "/lo:w"),
    "lowerdir+: lower": refused(imports(b + "/n/merged"), b + "/n/lower"),
    "merged, upper on the path": refused(imports(b + "/u"), b + "/m"),
    "inside a moved bind": refused(imports(b + "/site"), b + "/p/privsep"),
    "elsewhere": refused(imports(b + "/site"), b + "/r/l"),
}
os.chdir(b + "/r")
options = "lowerdir=l,upperdir=u,workdir=w"
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, b + "/r/m"], check=True)
results["relative layer"] = refused(imports(b + "/r/m"), b + "/r/l")
print(repr(results))
"""
)


def test_an_overlays_layer_reached_through_another_mount_of_its_filesystem_is_seen(tmp_path: Path) -> None:
    """Fresh-eyes audit 16: the layers' filesystem also mounted elsewhere (a second mount of a
    data disk, a bind): a grant of the upper or lower layer through that other mount was
    accepted, compared with the layers by path only, and its writes showed in the merged
    directory on the import path. Run in a mount namespace of its own."""
    b = tmp_path
    for name in ("disk", "m", "alias", "elsewhere"):
        (b / name).mkdir()
    script = tmp_path / "check.py"
    script.write_text(_ALIASED_LAYERS)
    setup = (
        'B="$1"; shift; mount -t tmpfs disk "$B/disk" && '
        'mkdir -p "$B/disk/lower/lib" "$B/disk/upper/lib" "$B/disk/work" "$B/disk/data" && '
        'D="$B/disk"; O="lowerdir=$D/lower,upperdir=$D/upper,workdir=$D/work"; '
        'mount -t overlay overlay -o "$O" "$B/m" && '
        'mount --bind "$B/disk" "$B/alias" && exec "$PY" "$@"'
    )
    results = _in_namespace(setup, script, b)
    for grant in ("alias/upper/lib", "alias/lower/lib", "alias/upper", "alias"):
        refusal = results[grant]
        assert refusal is not None and f"{b}/m/lib" in refusal, (grant, results)
    assert results["alias/data"] is None  # the same disk, outside the layers: grantable


_ALIASED_LAYERS = (
    _REFUSED
    + r"""
b = sys.argv[1]
imports = lambda grants: check_grants(grants, path=[b + "/m/lib"])
print(repr({
    grant: refused(imports, b + "/" + grant)
    for grant in ("alias/upper/lib", "alias/lower/lib", "alias/upper", "alias", "alias/data")
}))
"""
)
