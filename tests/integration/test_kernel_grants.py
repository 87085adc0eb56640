"""Kernel-served grants: bound into the view, enforced by mounts and Landlock, never widened.

Every test runs a real confined child under ``privsep run`` with the broker as
root and as an unprivileged user, and checks the host afterwards. The escape
tests try what an attacker inside a write grant would: rename or exchange an
ancestor of a denied path, hard links, symlinks planted beside it, ``..``,
``/proc/self/fd`` reopening, ``open_by_handle_at``, mount calls; and what one
with only a read grant would: change data or any metadata of the host's files.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import NONROOT_ID, PRIVSEP, PYTHON, REPO, RunPrivsep, as_nonroot, json_output

SECRET = "the denied secret\n"  # noqa: S105 - a marker, not a password

# A child that attempts each operation and reports the errno (or what it read).
ATTEMPTS = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ARGS = json.loads(sys.argv[1])
out = {}
def attempt(name, fn, *args):
    try:
        result = fn(*args)
        out[name] = result if isinstance(result, (str, int, list)) or result is None else "ok"
        if out[name] is None:
            out[name] = "ok"
    except OSError as exc:
        out[name] = exc.errno
def read(path):
    with open(path) as f:
        return f.read()
def write(path, text="PWNED\n", mode="w"):
    with open(path, mode) as f:
        f.write(text)
def renameat2(src, dst, flags):
    if libc.renameat2(-100, src.encode(), -100, dst.encode(), flags) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
def syscall(nr, *args):
    if libc.syscall(nr, *args) < 0:
        raise OSError(ctypes.get_errno(), "syscall")
"""


def _run_child(
    run: RunPrivsep, tmp: Path, body: str, params: dict[str, object], *flags: str
) -> subprocess.CompletedProcess[str]:
    """Run ATTEMPTS + ``body`` confined with ``flags``; the script's directory is granted read-only."""
    scripts = tmp / "scripts"
    scripts.mkdir(mode=0o755, exist_ok=True)
    script = scripts / f"child-{abs(hash(body))}.py"
    script.write_text(ATTEMPTS + body + "\nprint(json.dumps(out))\n")
    script.chmod(0o644)
    return run(
        *flags, "--allow-read", str(scripts), "--", str(PYTHON), str(script), json.dumps(params)
    )  # fmt: skip


def _policy(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def data(shared_tmp: Path, broker_user: str) -> Path:
    """shared_tmp/data (the write grant) holding x/private/secret.txt and secretfile, both denied."""
    root = shared_tmp / "data"
    (root / "x" / "private").mkdir(parents=True)
    (root / "x" / "private" / "secret.txt").write_text(SECRET)
    (root / "secretfile").write_text(SECRET)
    (root / "open.txt").write_text("open\n")
    for path in [shared_tmp, *shared_tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    if broker_user == "nonroot":
        for path in [root, *root.rglob("*")]:
            os.chown(path, NONROOT_ID, NONROOT_ID)
    return root


def _deny_policy(data: Path) -> Path:
    return _policy(
        data.parent,
        "deny.toml",
        'extends = "python"\n'
        f'[[files]]\npath = "{data}"\naccess = ["read", "write", "create", "truncate", "list"]\n'
        f'[[files]]\npath = "{data}/x/private"\ndeny = true\n'
        f'[[files]]\npath = "{data}/secretfile"\ndeny = true\n',
    )


ESCAPES = r"""
d = ARGS["data"]
attempt("read_secret", read, d + "/x/private/secret.txt")
attempt("list_private", os.listdir, d + "/x/private")
attempt("read_secretfile", read, d + "/secretfile")
attempt("write_secretfile", write, d + "/secretfile")
attempt("rename_ancestor", os.rename, d + "/x", d + "/y")
attempt("read_after_rename", read, d + "/y/private/secret.txt")
attempt("rename_private", os.rename, d + "/x/private", d + "/p2")
attempt("rename_secretfile", os.rename, d + "/secretfile", d + "/moved")
os.mkdir(d + "/other")
attempt("exchange_ancestor", renameat2, d + "/x", d + "/other", 2)  # RENAME_EXCHANGE
attempt("exchange_private", renameat2, d + "/x/private", d + "/other", 2)
attempt("read_after_exchange", read, d + "/other/private/secret.txt")
attempt("hardlink_secretfile", os.link, d + "/secretfile", d + "/hl")
attempt("hardlink_secret", os.link, d + "/x/private/secret.txt", d + "/hl2")
attempt("symlink_plant", os.symlink, d + "/x/private/secret.txt", d + "/link")
attempt("read_symlink", read, d + "/link")
attempt("dotdot", read, d + "/x/../x/private/secret.txt")
attempt("rmdir_private", os.rmdir, d + "/x/private")
attempt("unlink_secretfile", os.unlink, d + "/secretfile")
attempt("rmtree_x", os.rmdir, d + "/x")
fd = os.open(d + "/x", os.O_RDONLY | os.O_DIRECTORY)
attempt("openat_private", lambda: os.open("private/secret.txt", os.O_RDONLY, dir_fd=fd))
attempt("proc_fd_reopen", read, f"/proc/self/fd/{fd}/private/secret.txt")
attempt("chmod_private", os.chmod, d + "/x/private", 0o777)
attempt("open_ok", read, d + "/open.txt")
"""


def test_deny_masks_survive_every_granted_operation(run_privsep: RunPrivsep, data: Path) -> None:
    proc = _run_child(
        run_privsep, data.parent, ESCAPES, {"data": str(data)}, "--policy", str(_deny_policy(data))
    )
    out = json_output(proc)
    assert out["open_ok"] == "open\n"  # the grant itself works
    for name in ("read_secret", "list_private", "read_secretfile", "openat_private", "proc_fd_reopen"):
        assert out[name] in (13, 2), (name, out[name])  # the mask: mode 0, empty
    assert out["write_secretfile"] in (13, 30), out  # EACCES or EROFS
    for name in ("rename_ancestor", "rename_secretfile", "exchange_ancestor"):
        assert out[name] == 16, (name, out[name])  # EBUSY: a mount point, or an ancestor pinned
    assert out["rename_private"] in (16, 18) and out["exchange_private"] in (
        16,
        18,
    )  # EBUSY or EXDEV (another mount)
    for name in ("read_after_rename", "read_after_exchange", "read_symlink", "dotdot"):
        assert out[name] != SECRET, (name, out[name])
    assert out["hardlink_secretfile"] == 18  # EXDEV: the mask is another mount
    assert out["hardlink_secret"] in (13, 2)
    assert out["rmdir_private"] == 16 and out["unlink_secretfile"] == 16
    assert out["rmtree_x"] in (16, 39)  # EBUSY (pinned) or ENOTEMPTY
    assert out["chmod_private"] in (1, 30)  # EPERM (not its own) or EROFS
    # The host's tree is where it was, unchanged.
    assert (data / "x" / "private" / "secret.txt").read_text() == SECRET
    assert (data / "secretfile").read_text() == SECRET
    assert stat.S_IMODE((data / "x" / "private").stat().st_mode) == 0o755
    assert not (data / "y").exists() and not (data / "hl").exists()


OPEN_BY_HANDLE = r"""
import struct
d = ARGS["data"]
# name_to_handle_at + open_by_handle_at: reach an inode without a path. Both are in the dangerous
# set; the sandbox is killed before the handle can be used.
buf = ctypes.create_string_buffer(struct.pack("II", 128, 0) + bytes(128))
mount_id = ctypes.c_int()
libc.syscall(303, -100, (d + "/x").encode(), buf, ctypes.byref(mount_id), 0)
fd = libc.syscall(304, -100, buf, 0)
out["fd"] = fd
if fd >= 0:
    out["read"] = os.read(fd, 100).decode()
"""


def test_open_by_handle_and_mount_tricks_kill_the_sandbox(run_privsep: RunPrivsep, data: Path) -> None:
    policy = str(_deny_policy(data))
    # A bind mount of the denied directory's parent over something else.
    mount = 'd = ARGS["data"]\nout["r"] = libc.mount((d + "/x").encode(), b"/tmp", None, 4096, None)\n'
    for body, name in ((OPEN_BY_HANDLE, "name_to_handle_at|open_by_handle_at"), (mount, "mount")):
        proc = _run_child(run_privsep, data.parent, body, {"data": str(data)}, "--policy", policy)
        assert SECRET not in proc.stdout
        assert proc.returncode == 128 + 31, proc.stderr  # SIGSYS: the dangerous set kills
        assert any(n in proc.stderr for n in name.split("|")), proc.stderr


READ_ONLY = r"""
f = ARGS["file"]
d = os.path.dirname(f)
attempt("read", read, f)
attempt("write", write, f)
attempt("append", write, f, "x", "a")
attempt("truncate", os.truncate, f, 0)
fd = os.open(f, os.O_RDONLY)
attempt("ftruncate", os.ftruncate, fd, 0)
attempt("fchmod", os.fchmod, fd, 0o777)
attempt("chmod", os.chmod, f, 0o777)
attempt("chown", os.chown, f, os.getuid(), os.getgid())
attempt("utime", os.utime, f, (0, 0))
attempt("futimens", os.utime, fd, (0, 0))
attempt("setxattr", os.setxattr, f, "user.pwned", b"1")
attempt("fsetxattr", os.setxattr, fd, "user.pwned", b"1")
acl = bytes.fromhex("02000000" "01000600ffffffff" "04000600ffffffff" "20000600ffffffff")
attempt("acl", os.setxattr, f, "system.posix_acl_access", acl)
attempt("create", write, d + "/new.txt")
attempt("mkdir", os.mkdir, d + "/newdir")
attempt("rename", os.rename, f, d + "/renamed")
attempt("unlink", os.unlink, f)
attempt("proc_reopen_rw", lambda: os.open(f"/proc/self/fd/{fd}", os.O_RDWR))
attempt("stat_mode", lambda: os.stat(f).st_mode & 0o7777)
attempt("listdir", lambda: sorted(os.listdir(d)))
"""


def test_a_read_grant_changes_nothing_on_the_host(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    grant = shared_tmp / "ro"
    grant.mkdir()
    target = grant / "f.txt"
    target.write_text("host data\n")
    target.chmod(0o666)  # even world-writable on the host: the grant says read
    grant.chmod(0o777)
    before = (target.stat(), target.read_text(), os.listxattr(target))
    proc = _run_child(
        run_privsep,
        shared_tmp,
        READ_ONLY,
        {"file": str(target)},
        "--policy",
        "python",
        "--allow-read",
        str(grant),
    )
    out = json_output(proc)
    assert out["read"] == "host data\n" and out["listdir"] == ["f.txt"]
    assert out["stat_mode"] == 0o666
    for name in ("write", "append", "truncate", "create", "mkdir", "rename", "unlink", "chmod", "fchmod"):
        assert out[name] in (13, 30), (name, out[name])  # EACCES (Landlock) or EROFS (the mount)
    for name in ("utime", "futimens", "setxattr", "fsetxattr", "acl", "chown"):
        assert out[name] in (1, 13, 30, 95), (name, out[name])
    assert out["ftruncate"] in (13, 22, 30)  # read-only fd: EINVAL; else Landlock or EROFS
    assert out["proc_reopen_rw"] in (13, 30)
    after = target.stat()
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns, after.st_size) == (
        before[0].st_mode, before[0].st_uid, before[0].st_gid, before[0].st_mtime_ns, before[0].st_size,
    )  # fmt: skip
    assert target.read_text() == before[1] and os.listxattr(target) == before[2]
    assert sorted(os.listdir(grant)) == ["f.txt"]


SETID = r"""
d = ARGS["dir"]
write(d + "/f")
attempt("chmod_suid", os.chmod, d + "/f", 0o4755)
attempt("chmod_sgid", os.chmod, d + "/f", 0o2755)
fd = os.open(d + "/f", os.O_RDONLY)
attempt("fchmod_suid", os.fchmod, fd, 0o4755)
attempt("chmod_plain", os.chmod, d + "/f", 0o750)
attempt("open_suid", lambda: os.close(os.open(d + "/g", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("mknod_suid", os.mknod, d + "/h", stat.S_IFREG | 0o4755)
how = struct.pack("QQQ", os.O_CREAT | os.O_WRONLY, 0o4755, 0)
attempt("openat2", syscall, 437, -100, (d + "/i").encode(), how, len(how))
attempt("mkdir_mode", os.mkdir, d + "/sub", 0o750)
fd = os.open(d + "/made", os.O_CREAT | os.O_WRONLY, 0o640)
os.close(fd)
attempt("whoami", lambda: __import__("pwd").getpwuid(os.getuid()).pw_name)
"""


def test_a_write_grant_never_leaves_a_setid_file_and_keeps_the_modes_asked(
    run_privsep: RunPrivsep, shared_tmp: Path, broker_user: str
) -> None:
    out_dir = shared_tmp / "out"
    out_dir.mkdir(mode=0o755)
    owner = NONROOT_ID if broker_user == "nonroot" else 0
    os.chown(out_dir, owner, owner)
    proc = _run_child(
        run_privsep, shared_tmp, "import stat, struct\n" + SETID, {"dir": str(out_dir)},
        "--policy", "python", "--allow-write", str(out_dir),
    )  # fmt: skip
    out = json_output(proc)
    for name in ("chmod_suid", "chmod_sgid", "fchmod_suid", "open_suid", "mknod_suid"):
        assert out[name] == 1, (name, out[name])  # EPERM from seccomp
    assert out["openat2"] == 38  # ENOSYS: its mode lives in memory
    assert out["chmod_plain"] == "ok" and out["mkdir_mode"] == "ok"
    assert out["whoami"] == "sandbox"  # the generated /etc/passwd names the child
    for path in out_dir.iterdir():
        st = path.stat()
        assert not st.st_mode & 0o6000, path
        assert (st.st_uid, st.st_gid) == (owner, owner), path  # the grant's owner, on the host
    assert stat.S_IMODE((out_dir / "f").stat().st_mode) == 0o750
    assert stat.S_IMODE((out_dir / "made").stat().st_mode) == 0o640  # as asked, under umask 022
    assert stat.S_IMODE((out_dir / "sub").stat().st_mode) == 0o750
    assert not (out_dir / "g").exists() and not (out_dir / "h").exists() and not (out_dir / "i").exists()


NESTED = r"""
d = ARGS["dir"]
attempt("write_inner", write, d + "/ro/f.txt")
attempt("create_inner", write, d + "/ro/new.txt")
attempt("write_outer", write, d + "/f.txt")
from privsep import client
try:
    client.open(d + "/ro/f.txt", "w").close()
    out["client_inner"] = "ok"
except PermissionError as exc:
    out["client_inner"] = str(exc)
"""


def test_a_read_grant_inside_a_write_grant_is_read_only(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    outer = shared_tmp / "rw"
    (outer / "ro").mkdir(parents=True)
    (outer / "ro" / "f.txt").write_text("inner\n")
    for path in [outer, *outer.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    proc = _run_child(
        run_privsep, shared_tmp, NESTED, {"dir": str(outer)},
        "--policy", "python", "--allow-write", str(outer), "--allow-read", str(outer / "ro"),
    )  # fmt: skip
    out = json_output(proc)
    assert out["write_outer"] == "ok"
    assert out["write_inner"] in (13, 30) and out["create_inner"] in (13, 30)
    message = str(out["client_inner"])
    assert "write" in message and "--allow-write" in message
    assert (outer / "ro" / "f.txt").read_text() == "inner\n"


def test_grants_the_kernel_cannot_narrow_are_refused_with_the_fix(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    (shared_tmp / "rw" / "in").mkdir(parents=True)
    policy = _policy(
        shared_tmp,
        "nested.toml",
        'extends = "minimal"\n[view]\ntmp = false\n'
        f'[[files]]\npath = "{shared_tmp}/rw"\naccess = ["read", "write", "create", "list"]\n'
        f'[[files]]\npath = "{shared_tmp}/rw/in"\naccess = ["read", "write", "list"]\n',
    )
    proc = run_privsep("--policy", str(policy), "--", "/bin/true")
    assert proc.returncode == 125
    assert "files[1]" in proc.stderr and 'serve = "broker"' in proc.stderr and "create" in proc.stderr
    check = subprocess.run(
        [str(PRIVSEP), "policy", "check", str(policy)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 1 and "files[1]" in check.stdout


def test_a_deny_of_a_missing_path_in_a_write_grant_is_refused(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    (shared_tmp / "repo").mkdir(mode=0o777)
    policy = _policy(
        shared_tmp,
        "missing.toml",
        'extends = "minimal"\n[view]\ntmp = false\n'
        f'[[files]]\npath = "{shared_tmp}/repo"\naccess = ["read", "write", "create", "list"]\n'
        f'[[files]]\npath = "{shared_tmp}/repo/.git/hooks"\ndeny = true\n',
    )
    proc = run_privsep("--policy", str(policy), "--", "/bin/mkdir", "-p", f"{shared_tmp}/repo/.git/hooks")
    assert proc.returncode == 125, proc.stderr
    assert "does not exist" in proc.stderr and "mkdir -p" in proc.stderr
    assert not (shared_tmp / "repo" / ".git").exists()


def test_a_write_grant_without_create_or_truncate_holds(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    grant = shared_tmp / "w"
    grant.mkdir(mode=0o777)
    (grant / "f.txt").write_text("0123456789\n")
    (grant / "f.txt").chmod(0o666)
    rule = f'[[files]]\npath = "{grant}"\naccess = ["read", "write", "list"]\n'
    # Under the private /tmp (whose Landlock rights reach everything beneath it) this is refused;
    # without it, the kernel holds the grant to its words.
    refused = run_privsep(
        "--policy", str(_policy(shared_tmp, "t.toml", f'extends = "minimal"\n{rule}')), "--", "true"
    )
    assert refused.returncode == 125
    assert "the private /tmp" in refused.stderr and "tmp = false" in refused.stderr
    policy = _policy(shared_tmp, "w.toml", f'extends = "minimal"\n[view]\ntmp = false\n{rule}')
    script = (
        f"cd {grant} && (printf AB | dd of=f.txt conv=notrunc 2>/dev/null; echo write=$?); "
        "(true > f.txt; echo trunc=$?); (touch new.txt; echo create=$?); (rm f.txt; echo rm=$?); "
        "(mkdir d; echo mkdir=$?)"
    )
    proc = run_privsep("--policy", str(policy), "--", "/bin/sh", "-c", script)
    lines = dict(line.split("=") for line in proc.stdout.split())
    assert lines == {"write": "0", "trunc": "2", "create": "1", "rm": "1", "mkdir": "1"}, proc.stderr  # sh: 2
    assert (grant / "f.txt").read_text() == "AB23456789\n"
    assert sorted(p.name for p in grant.iterdir()) == ["f.txt"]


def test_the_working_directory_and_hints_for_what_the_sandbox_hid(shared_tmp: Path) -> None:
    (shared_tmp / "in").mkdir()
    (shared_tmp / "in" / "a.txt").write_text("a\n")
    (shared_tmp / "hidden").mkdir()
    (shared_tmp / "hidden" / "h.txt").write_text("h\n")
    for path in [shared_tmp, *shared_tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(PRIVSEP), "run", *args]
        return subprocess.run(argv, cwd=shared_tmp, capture_output=True, text=True, check=False, timeout=60)

    # Relative paths mean what they meant outside: the working directory is kept (a directory on
    # the way to a grant exists in the view, as under bwrap).
    proc = run("--allow-read", "in", "--", "cat", "in/a.txt")
    assert (proc.returncode, proc.stdout) == (0, "a\n"), proc.stderr
    proc = run("--allow-read", "in", "--", "cat", "hidden/h.txt", "in/a.txt")
    assert proc.returncode == 1
    hidden = shared_tmp / "hidden"
    assert f"privsep: {hidden}/h.txt is outside the sandbox; re-run with --allow-read={hidden}" in proc.stderr
    proc = run("--allow-read", "in", "--", "cp", "in/a.txt", "out/b.txt")
    assert proc.returncode == 1
    assert "(out/b.txt" not in proc.stderr
    (shared_tmp / "out").mkdir(mode=0o755)
    proc = run("--allow-read", "in", "--", "cp", "in/a.txt", "out/b.txt")
    assert f"re-run with --allow-write={shared_tmp}/out" in proc.stderr
    proc = run("--", "cat", "in/a.txt")  # nothing granted: the child runs in /
    assert f"the working directory {shared_tmp} is outside the sandbox" in proc.stderr
    # A write into an existing file of a read grant: the kernel's EROFS, no broker call; the
    # line names the grant, and its fix works.
    proc = run("--allow-read", "in", "--", "sed", "-i", "s/a/b/", "in/a.txt")
    assert proc.returncode != 0
    fix = f"if the command writes it, re-run with --allow-write={shared_tmp}/in"
    assert f"privsep: {shared_tmp}/in/a.txt is read-only in the sandbox (a read grant); {fix}" in proc.stderr
    proc = run("--allow-write", "in", "--", "sed", "-i", "s/a/b/", "in/a.txt")
    assert proc.returncode == 0, proc.stderr
    assert (shared_tmp / "in" / "a.txt").read_text() == "b\n"


def test_created_files_belong_to_the_invoking_user_without_root(shared_tmp: Path) -> None:
    out_dir = shared_tmp / "mine"
    out_dir.mkdir(mode=0o755)
    os.chown(out_dir, NONROOT_ID, NONROOT_ID)
    argv = [
        str(PRIVSEP),
        "run",
        "--allow-write",
        str(out_dir),
        "--",
        "/bin/sh",
        "-c",
        f"umask 027; echo x > {out_dir}/f",
    ]
    proc = subprocess.run(as_nonroot(argv), cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    st = (out_dir / "f").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NONROOT_ID, NONROOT_ID, 0o640)


# --- what a fresh audit of kernel-served grants found (each failed before its fix) -----------------


def test_a_symlink_planted_where_a_nested_grant_was_is_refused_next_run(
    run_privsep: RunPrivsep, shared_tmp: Path, broker_user: str
) -> None:
    data, victim = shared_tmp / "data", shared_tmp / "victim"
    (data / "b" / "out").mkdir(parents=True)
    victim.mkdir()
    (victim / "config").write_text("orig\n")
    (victim / "config").chmod(0o600)
    if broker_user == "nonroot":
        for path in [data, *data.rglob("*")]:
            os.chown(path, NONROOT_ID, NONROOT_ID)
    grants = ("--allow-write", str(data), "--allow-read", str(data / "b" / "out"))
    # Same run: the ancestor of the nested grant is pinned, so it cannot be moved away.
    proc = run_privsep(*grants, "--", "/bin/mv", f"{data}/b", f"{data}/b2")
    assert proc.returncode == 1 and "busy" in proc.stderr, proc.stderr
    # Planted from outside this sandbox (another run, with other grants): the next run refuses it.
    (data / "b").rename(data / "b2")
    (data / "b").mkdir()
    (data / "b" / "out").symlink_to(victim)
    proc = run_privsep(*grants, "--", "/bin/cat", f"{data}/b/out/config")
    assert proc.returncode == 125 and "symbolic link" in proc.stderr, proc.stderr
    assert "orig" not in proc.stdout


MMAP_SETUID = r"""
import mmap
f = ARGS["file"]
try:
    fd = os.open(f, os.O_RDWR)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[:5] = b"PWNED"
    m.flush()
    out["mmap"] = "ok"
except OSError as exc:
    out["mmap"] = exc.errno
"""


def _assert_not_rewritable(run: RunPrivsep, tmp: Path, grant: Path, prog: Path) -> None:
    """A write through a shared mmap of ``prog`` (in the write grant ``grant``) fails, and it is unchanged."""
    before = prog.read_bytes()
    out = json_output(
        _run_child(
            run, tmp, MMAP_SETUID, {"file": str(prog)}, "--policy", "python", "--allow-write", str(grant)
        )
    )
    assert out["mmap"] in (13, 30), out  # bound read-only onto itself: EROFS
    assert prog.read_bytes() == before


def test_a_setuid_program_in_a_root_owned_write_grant_cannot_be_rewritten(
    run_as_root: RunPrivsep, shared_tmp: Path
) -> None:
    grant = shared_tmp / "suid"
    grant.mkdir(mode=0o755)
    prog = grant / "prog"
    prog.write_bytes(b"#!/bin/sh\necho original\n")
    prog.chmod(0o4755)
    _assert_not_rewritable(run_as_root, shared_tmp, grant, prog)
    assert stat.S_IMODE(prog.stat().st_mode) == 0o4755


def test_sockets_and_fifos_in_a_grant_are_masked(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    import socket

    grant = shared_tmp / "socks"
    (grant / "ro").mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(grant / "root.sock"))
    os.chmod(grant / "root.sock", 0o600)
    server.listen()
    server.setblocking(False)
    os.mkfifo(grant / "ro" / "cmd.fifo", 0o666)
    for path in (shared_tmp, grant, grant / "ro"):
        path.chmod(0o777)
    script = (
        f"import socket\ns = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({str(grant / 'root.sock')!r}); print('connected')\n"
        f"except OSError as e:\n    print('refused', e.errno)\n"
        f"try:\n    open({str(grant / 'ro' / 'cmd.fifo')!r}, 'w').write('INJECT')\n"
        "    print('fifo written')\n"
        f"except OSError as e:\n    print('fifo refused', e.errno)\n"
    )
    try:
        proc = run_privsep(
            "--policy", "python", "--allow-write", str(grant), "--allow-read", str(grant / "ro"),
            "--", str(PYTHON), "-c", script,
        )  # fmt: skip
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()
    assert "connected" not in proc.stdout and "refused" in proc.stdout, proc.stderr
    assert "fifo written" not in proc.stdout


def test_a_broker_served_grant_inside_a_writable_kernel_grant_is_refused(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    (shared_tmp / "ap").mkdir(mode=0o777)
    (shared_tmp / "ap" / "audit.log").write_text("history\n")
    policy = _policy(
        shared_tmp,
        "ap.toml",
        'extends = "minimal"\n'
        f'[[files]]\npath = "{shared_tmp}/ap"\naccess = ["read", "write", "create", "truncate", "list"]\n'
        f'[[files]]\npath = "{shared_tmp}/ap/audit.log"\naccess = ["append"]\n',
    )
    proc = run_privsep(
        "--policy", str(policy), "--", "/bin/sh", "-c", f"echo REWRITTEN > {shared_tmp}/ap/audit.log"
    )
    assert proc.returncode == 125 and "files[1]" in proc.stderr and "served by the broker" in proc.stderr
    assert (shared_tmp / "ap" / "audit.log").read_text() == "history\n"


def test_a_deny_written_through_a_symlinked_grant_is_still_a_mask(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    real = shared_tmp / "real"
    real.mkdir(mode=0o755)
    (real / "secret").write_text(SECRET)
    (real / "secret").chmod(0o644)
    (shared_tmp / "link").symlink_to(real)
    policy = _policy(
        shared_tmp,
        "deny_link.toml",
        'extends = "minimal"\n'
        f'[[files]]\npath = "{shared_tmp}/link"\naccess = ["read", "list"]\n'
        f'[[files]]\npath = "{shared_tmp}/link/secret"\ndeny = true\n',
    )
    proc = run_privsep(
        "--policy", str(policy), "--", "/bin/cat", f"{shared_tmp}/link/secret", f"{real}/secret"
    )
    assert SECRET not in proc.stdout and proc.returncode == 1, proc.stdout


def test_fallocate_cannot_shrink_a_file_without_truncate(run_privsep: RunPrivsep, shared_tmp: Path) -> None:
    grant = shared_tmp / "w"
    grant.mkdir(mode=0o777)
    target = grant / "f.bin"
    target.write_bytes(b"x" * 65536)
    target.chmod(0o666)
    policy = _policy(
        shared_tmp,
        "w.toml",
        f'extends = "python"\n[view]\ntmp = false\n'
        f'[[files]]\npath = "{grant}"\naccess = ["read", "write", "list"]\n',
    )
    script = (
        f"import ctypes, os\nfd = os.open({str(target)!r}, os.O_RDWR)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.fallocate(fd, 0x08, ctypes.c_long(0), ctypes.c_long(61440))\nprint(r, ctypes.get_errno())\n"
    )
    proc = run_privsep("--policy", str(policy), "--", str(PYTHON), "-c", script)
    assert proc.stdout.split() == ["-1", "95"], proc.stderr  # EOPNOTSUPP
    assert target.stat().st_size == 65536


# --- a second fresh audit -------------------------------------------------------------------------

#: struct vfs_cap_data, revision 2, effective: CAP_SETUID (7) and CAP_SETGID (6) permitted.
_CAPS = __import__("struct").pack("<IIIII", 0x02000001, (1 << 7) | (1 << 6), 0, 0, 0)


@pytest.mark.parametrize("kind", ["caps-not-executable", "setuid-owned-by-the-grant-owner"])
def test_no_writable_grant_lets_a_privileged_file_be_rewritten(
    run_privsep: RunPrivsep, shared_tmp: Path, kind: str
) -> None:
    """Any owner, either broker mode: the child may own the file there, and mmap keeps the bits."""
    grant = shared_tmp / "g"
    grant.mkdir(mode=0o755)
    prog = grant / "prog"
    prog.write_bytes(b"#!/bin/sh\necho original\n")
    os.chown(grant, NONROOT_ID, NONROOT_ID)
    os.chown(prog, NONROOT_ID, NONROOT_ID)
    if kind.startswith("caps"):
        prog.chmod(0o644)  # its owner could chmod +x it later
        os.setxattr(prog, "security.capability", _CAPS)
    else:
        prog.chmod(0o4755)
    _assert_not_rewritable(run_privsep, shared_tmp, grant, prog)


def test_a_grant_holding_a_directory_the_broker_cannot_list_is_refused(shared_tmp: Path) -> None:
    """Mode --x: searchable by name, not listable; a socket inside could not be found and masked."""
    grant = shared_tmp / "s"
    (grant / "d").mkdir(parents=True)
    for path in (shared_tmp, grant):
        path.chmod(0o755)
    os.chown(grant / "d", NONROOT_ID, NONROOT_ID)
    (grant / "d").chmod(0o311)
    argv = [str(PRIVSEP), "run", "--allow-read", str(grant), "--", "/bin/true"]
    proc = subprocess.run(as_nonroot(argv), cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 125
    assert f"cannot list {grant}/d inside a grant" in proc.stderr


HANDED = r"""
from privsep import client
f = client.open(ARGS["file"])
out["read"] = f.read()
attempt("fchmod", os.fchmod, f.fileno(), 0o777)
attempt("futimens", os.utime, f.fileno(), (0, 0))
attempt("fsetxattr", os.setxattr, f.fileno(), "user.pwned", b"1")
"""


def test_an_fd_the_broker_hands_out_for_a_read_grant_cannot_change_metadata(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """The kernel checks the inode's owner, not the fd's mode: the child owns the file (the broker's
    uid without root) and could fchmod it. Read grants are opened beneath a read-only clone."""
    grant = shared_tmp / "ro"
    grant.mkdir(mode=0o755)
    target = grant / "f.txt"
    target.write_text("host data\n")
    target.chmod(0o666)
    for path in (grant, target):
        os.chown(path, NONROOT_ID, NONROOT_ID)
    before = target.stat()
    out = json_output(
        _run_child(
            run_privsep,
            shared_tmp,
            HANDED,
            {"file": str(target)},
            "--policy",
            "python",
            "--allow-read",
            str(grant),
        )
    )
    assert out["read"] == "host data\n"
    assert out["fchmod"] == 30 and out["futimens"] == 30 and out["fsetxattr"] == 30, out  # EROFS
    after = target.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert os.listxattr(target) == []


SHADOW = r"""
from privsep import client
d = ARGS["dir"]
attempt("kernel_list", lambda: sorted(os.listdir(d + "/sub")))
attempt("client_list", lambda: sorted(client.listdir(d + "/sub")))
attempt("kernel_hidden", read, d + "/sub/secret")
attempt("client_hidden", lambda: client.open(d + "/sub/secret").read())
attempt("kernel_bound", read, d + "/conf")
attempt("client_bound", lambda: client.open(d + "/conf").read())
"""


def test_a_grant_shows_what_the_host_path_shows_never_what_a_mount_covers(
    run_privsep: RunPrivsep, shared_tmp: Path
) -> None:
    """A mount inside a grant (a tmpfs over a directory, a file bound over a file) covers what is
    under it on the host; the kernel's view and the broker's fds both show the mount, as bwrap does."""
    d = shared_tmp / "g"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "secret").write_text("HIDDEN UNDER THE MOUNT\n")
    (d / "conf").write_text("UNDERNEATH\n")
    (shared_tmp / "conf.src").write_text("BOUND\n")
    for path in [shared_tmp, *shared_tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(d / "sub")], check=True)
    try:
        (d / "sub" / "visible").write_text("v\n")
        (d / "sub" / "visible").chmod(0o644)
        subprocess.run(["mount", "--bind", str(shared_tmp / "conf.src"), str(d / "conf")], check=True)
        try:
            out = json_output(
                _run_child(
                    run_privsep,
                    shared_tmp,
                    SHADOW,
                    {"dir": str(d)},
                    "--policy",
                    "python",
                    "--allow-read",
                    str(d),
                )
            )
        finally:
            subprocess.run(["umount", str(d / "conf")], check=True)
    finally:
        subprocess.run(["umount", str(d / "sub")], check=True)
    assert out["kernel_list"] == ["visible"] and out["client_list"] == ["visible"], out
    assert out["kernel_hidden"] == 2, out  # ENOENT: the host path shows the tmpfs, not what it covers
    assert "HIDDEN" not in str(out["client_hidden"]), out
    assert out["kernel_bound"] == "BOUND\n" and out["client_bound"] == "BOUND\n", out
