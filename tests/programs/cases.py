"""The table of real programs: what a new user would run, and what they would expect to find.

Every check looks from the host after the run: exit status, stdout, which
files exist, their content, their mode and their owner. Modes are what the
program asked for under umask 022 (0644 files, 0755 directories and
executables); the owner is whoever ran the command (root, or NONROOT_ID
for the non-root broker), because that is whose files they are. A check
also says what must not be left behind (a temporary file of ``sed -i``, a
sqlite journal, the original of ``gzip``).

The harness additionally checks, for every case, that the read-granted IN
is exactly as it was.
"""

from __future__ import annotations

import bz2
import calendar
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.programs.harness import Case, Dirs, Run

REPO = Path(__file__).resolve().parent.parent.parent
#: The PyPI sdist whose own test suite runs in the sandbox; .ci/setup downloads it.
SIX_VERSION = "1.17.0"
SIX_SDIST = REPO / ".cache" / "sdists" / f"six-{SIX_VERSION}.tar.gz"

A_TXT = "hello needle\n"
B_TXT = "needle in d\n"
WORDS = "pear\napple\nfig\n"
HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello, world"); return 0; }\n'
MAKEFILE = "hello: hello.o\n\t$(CC) -o $@ hello.o\n"
#: A fixed date for ``touch -d`` and archive members: easy to recognise on the host.
STAMP = "2001-02-03 04:05:06 UTC"
STAMP_EPOCH = calendar.timegm((2001, 2, 3, 4, 5, 6))
GIT_ID = ["-c", "user.name=Test User", "-c", "user.email=test@example.com"]


# --- helpers the checks share ----------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def ok(run: Run) -> None:
    """The program exited 0."""
    assert run.returncode == 0, f"exit status {run.returncode}, want 0"


def stdout_is(run: Run, expected: str) -> None:
    ok(run)
    assert run.stdout == expected, f"stdout {run.stdout!r}, want {expected!r}"


def tree(top: Path) -> set[str]:
    """Every path under ``top``, relative, without ``top`` itself."""
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def only(run: Run, *names: str) -> None:
    """OUT holds exactly these entries (nothing left behind, nothing missing)."""
    found = tree(run.out)
    assert found == set(names), f"OUT holds {sorted(found)}, want {sorted(names)}"


def owned(run: Run, path: Path) -> None:
    st = path.lstat()
    assert st.st_uid == run.uid, f"{path} is owned by uid {st.st_uid}, want {run.uid} (who ran the command)"


def has_file(run: Run, path: Path, content: str | bytes | None = None, mode: int = 0o644) -> None:
    """A regular file with this content and mode, owned by the invoking user."""
    assert path.is_file() and not path.is_symlink(), f"{path} is not a regular file"
    if content is not None:
        data = path.read_bytes() if isinstance(content, bytes) else path.read_text()
        assert data == content, f"{path} holds {data!r}, want {content!r}"
    assert mode_of(path) == mode, f"{path} has mode {mode_of(path):04o}, want {mode:04o}"
    owned(run, path)


def has_dir(run: Run, path: Path, mode: int = 0o755) -> None:
    assert path.is_dir() and not path.is_symlink(), f"{path} is not a directory"
    assert mode_of(path) == mode, f"{path} has mode {mode_of(path):04o}, want {mode:04o}"
    owned(run, path)


def write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)


def git_host(*args: str) -> str:
    """Host-side git, blind to the host's config, trusting repositories of any owner."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}
    env |= {"GIT_AUTHOR_DATE": STAMP, "GIT_COMMITTER_DATE": STAMP}
    argv = ["git", "-c", "safe.directory=*", *GIT_ID, *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


# --- setups --------------------------------------------------------------------


def standard_input(d: Dirs) -> None:
    """IN: a.txt, words, d/b.txt, an executable d/run.sh, and a relative symlink."""
    write(d.inp / "a.txt", A_TXT)
    write(d.inp / "words", WORDS)
    write(d.inp / "d" / "b.txt", B_TXT)
    write(d.inp / "d" / "run.sh", "#!/bin/sh\necho run\n", 0o755)
    (d.inp / "link").symlink_to("d/b.txt")


def out_file(name: str, text: str) -> Callable[[Dirs], None]:
    def setup(d: Dirs) -> None:
        standard_input(d)
        write(d.out / name, text)

    return setup


def out_tree(d: Dirs) -> None:
    standard_input(d)
    write(d.out / "x" / "f", "f\n")
    write(d.out / "x" / "y" / "z", "z\n")
    write(d.out / "keep", "keep\n")


def archive_input(d: Dirs) -> None:
    """IN/a.tgz with a directory, a 0644 file and a 0755 script, all dated STAMP."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (("pkg/data.txt", b"data\n", 0o644), ("pkg/tool.sh", b"#!/bin/sh\n", 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, STAMP_EPOCH
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("pkg")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, STAMP_EPOCH
        tar.addfile(info)
    write(d.inp / "a.tgz", buf.getvalue())
    write(d.inp / "f.gz", gzip.compress(WORDS.encode()))


def gz_in_out(d: Dirs) -> None:
    """OUT/f.gz dated STAMP: gunzip gives its output the input file's times."""
    write(d.out / "f.gz", gzip.compress(WORDS.encode()))
    os.utime(d.out / "f.gz", (STAMP_EPOCH, STAMP_EPOCH))


def plain_in_out(d: Dirs) -> None:
    """OUT/f dated STAMP: gzip gives f.gz the original's times and mode."""
    write(d.out / "f", "secret\n")
    os.utime(d.out / "f", (STAMP_EPOCH, STAMP_EPOCH))


def c_in_out(d: Dirs) -> None:
    write(d.out / "hello.c", HELLO_C)
    write(d.out / "Makefile", MAKEFILE)


def c_in_in(d: Dirs) -> None:
    write(d.inp / "x.c", HELLO_C)


def repo_in_in(d: Dirs) -> None:
    """IN/repo: two commits, and a modified, uncommitted tracked file."""
    repo = d.inp / "repo"
    git_host("init", "-q", str(repo))
    write(repo / "f", "one\n")
    git_host("-C", str(repo), "add", "f")
    git_host("-C", str(repo), "commit", "-q", "-m", "first")
    write(repo / "f", "one\ntwo\n")
    git_host("-C", str(repo), "commit", "-q", "-a", "-m", "second")
    write(repo / "f", "one\ntwo\nthree\n")


def db_in_in(d: Dirs) -> None:
    con = sqlite3.connect(d.inp / "db.sqlite")
    with con:
        con.execute("create table t(x)")
        con.executemany("insert into t values (?)", [(1,), (2,), (4,)])
    con.close()


def six_in_in(d: Dirs) -> None:
    assert SIX_SDIST.is_file(), f"{SIX_SDIST} is missing: run `bash .ci/setup` (it downloads the sdist)"
    with tarfile.open(SIX_SDIST) as tar:
        tar.extractall(d.inp)  # noqa: S202 - a pinned sdist from PyPI; 3.11.2 has no extraction filter


def zip_in_in(d: Dirs) -> None:
    """IN/a.zip: pkg/x.txt (0644) and pkg/run.sh (0755), as a zip made on Unix records them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, mode in (("pkg/x.txt", "x\n", 0o644), ("pkg/run.sh", "#!/bin/sh\n", 0o755)):
            info = zipfile.ZipInfo(name, date_time=(2001, 2, 3, 4, 5, 6))
            info.external_attr = (stat.S_IFREG | mode) << 16
            z.writestr(info, data)
    write(d.inp / "a.zip", buf.getvalue())


def cpio_in_in(d: Dirs) -> None:
    """IN/a.cpio (newc): the standard input tree, made by the host's cpio."""
    standard_input(d)
    names = "".join(f"{p.relative_to(d.inp)}\n" for p in sorted(d.inp.rglob("*")))
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input=names.encode(),
        cwd=d.inp,
        capture_output=True,
        check=True,
    ).stdout
    write(d.inp / "a.cpio", archive)


def patch_in_out(d: Dirs) -> None:
    write(d.inp / "fix.patch", "--- a/conf\n+++ b/conf\n@@ -1,2 +1,2 @@\n-color=red\n+color=blue\n size=2\n")
    write(d.out / "conf", "color=red\nsize=2\n")


#: Two translation units and a pattern rule: make -j2 builds the objects side by side.
MAKEFILE_J = "prog: a.o b.o\n\t$(CC) -o $@ a.o b.o\n%.o: %.c\n\t$(CC) -c -o $@ $<\n"
A_C = "void greet(void);\nint main(void) { greet(); return 0; }\n"
B_C = '#include <stdio.h>\nvoid greet(void) { puts("hello, world"); }\n'
HELLO_CPP = '#include <iostream>\nint main() { std::cout << "hello, world" << std::endl; }\n'


def multi_c_in_out(d: Dirs) -> None:
    write(d.out / "Makefile", MAKEFILE_J)
    write(d.out / "a.c", A_C)
    write(d.out / "b.c", B_C)


def lib_c_in_in(d: Dirs) -> None:
    write(d.inp / "a.c", A_C)
    write(d.inp / "b.c", B_C)


def cpp_in_in(d: Dirs) -> None:
    write(d.inp / "h.cpp", HELLO_CPP)


def repo_in_out(d: Dirs) -> None:
    """OUT/repo: repo_in_in's repository, with its uncommitted change."""
    repo_in_in(Dirs(d.out, d.out))


NGINX_CONF = """daemon off;
user root root;
pid /tmp/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
    }}
}}
"""


def nginx_in(port: int | None) -> Callable[[Dirs], None]:
    """IN: the standard tree and nginx.conf serving it on ``port`` (None: the run's own port).

    ``user root root`` keeps a root nginx from switching its workers to nobody, which a
    capability-less root (bwrap's, for port 80) cannot do; privsep's nginx is not root.
    """

    def setup(d: Dirs) -> None:
        standard_input(d)
        write(d.inp / "nginx.conf", NGINX_CONF.format(port=port or d.port, root=d.inp))

    return setup


# --- checks: coreutils & friends ------------------------------------------------


def check_cat(r: Run) -> None:
    stdout_is(r, A_TXT)


def check_ls_l(r: Run) -> None:
    ok(r)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("total "), lines
    entries = {line.split()[-1]: line.split()[0] for line in lines[1:]}
    assert entries == {"b.txt": "-rw-r--r--", "run.sh": "-rwxr-xr-x"}, entries


def check_stat(r: Run) -> None:
    ok(r)
    assert f"File: {r.inp}/a.txt" in r.stdout, r.stdout
    assert f"Size: {len(A_TXT)}" in r.stdout, r.stdout
    assert "Access: (0644/-rw-r--r--)" in r.stdout, r.stdout


def check_sort_o(r: Run) -> None:
    ok(r)
    has_file(r, r.out / "sorted", "".join(sorted(WORDS.splitlines(keepends=True))))
    only(r, "sorted")


def check_find(r: Run) -> None:
    ok(r)
    assert sorted(r.stdout.splitlines()) == [f"{r.inp}/a.txt", f"{r.inp}/d/b.txt"], r.stdout


def check_du(r: Run) -> None:
    ok(r)
    assert re.fullmatch(rf"[1-9][0-9]*\t{re.escape(str(r.inp))}\n", r.stdout), r.stdout


def check_wc(r: Run) -> None:
    stdout_is(r, f"3 {r.inp}/words\n")


def check_cp_r(r: Run) -> None:
    ok(r)
    only(r, "d", "d/b.txt", "d/run.sh")
    has_dir(r, r.out / "d")
    has_file(r, r.out / "d" / "b.txt", B_TXT)
    has_file(r, r.out / "d" / "run.sh", mode=0o755)


def check_mv(r: Run) -> None:
    ok(r)
    only(r, "new.txt")
    has_file(r, r.out / "new.txt", "moved\n")


def check_mkdir_p(r: Run) -> None:
    ok(r)
    only(r, "a", "a/b")
    has_dir(r, r.out / "a")
    has_dir(r, r.out / "a" / "b")


def check_rm_r(r: Run) -> None:
    ok(r)
    only(r, "keep")


def check_chmod(r: Run) -> None:
    ok(r)
    has_file(r, r.out / "f", "secret\n", mode=0o600)


def check_touch_d(r: Run) -> None:
    ok(r)
    only(r, "old", "new")
    for name in ("old", "new"):
        path = r.out / name
        assert path.stat().st_mtime == STAMP_EPOCH, (
            f"{name}: mtime {path.stat().st_mtime}, want {STAMP_EPOCH}"
        )
    has_file(r, r.out / "new", "")
    has_file(r, r.out / "old", "old\n")


def check_ln_s(r: Run) -> None:
    ok(r)
    only(r, "link")
    link = r.out / "link"
    assert link.is_symlink(), f"{link} is not a symlink"
    assert str(link.readlink()) == "target.txt", link.readlink()
    owned(r, link)


def check_sed_i(r: Run) -> None:
    ok(r)
    only(r, "conf")
    has_file(r, r.out / "conf", "color=blue\nsize=2\n")


def check_awk(r: Run) -> None:
    stdout_is(r, "pear 4\napple 5\nfig 3\n")


def check_grep_r(r: Run) -> None:
    ok(r)
    want = [f"{r.inp}/a.txt:{A_TXT.strip()}", f"{r.inp}/d/b.txt:{B_TXT.strip()}"]
    assert sorted(r.stdout.splitlines()) == want, r.stdout


def check_readlink_f(r: Run) -> None:
    stdout_is(r, f"{r.inp}/d/b.txt\n")


def check_test_w(r: Run) -> None:
    """Exit 0: OUT is writable, IN's file readable and not writable."""
    ok(r)


def check_head(r: Run) -> None:
    stdout_is(r, "pear\napple\n")


def check_tail(r: Run) -> None:
    stdout_is(r, "fig\n")


def check_sha256sum(r: Run) -> None:
    stdout_is(r, f"{hashlib.sha256(A_TXT.encode()).hexdigest()}  {r.inp}/a.txt\n")


def check_realpath(r: Run) -> None:
    stdout_is(r, f"{r.inp}/d/b.txt\n")


def check_tee(r: Run) -> None:
    stdout_is(r, A_TXT)
    has_file(r, r.out / "copy", A_TXT)
    only(r, "copy")


def check_diff_r(r: Run) -> None:
    """diff exits 1 when trees differ; the lone difference names the file only OUT has."""
    assert r.returncode == 1, f"exit status {r.returncode}, want 1 (trees differ)"
    assert r.stdout == f"Only in {r.out}/d: extra\n", r.stdout


# --- checks: archivers ------------------------------------------------------


def check_tar_czf(r: Run) -> None:
    ok(r)
    only(r, "a.tgz")
    has_file(r, r.out / "a.tgz")
    with tarfile.open(r.out / "a.tgz") as tar:
        names = {m.name for m in tar.getmembers()}
        member = tar.extractfile("./a.txt")
        assert member is not None and member.read() == A_TXT.encode()
    assert {"./a.txt", "./words", "./d/b.txt", "./d/run.sh", "./link"} <= names, names


def check_tar_xzf(r: Run) -> None:
    ok(r)
    only(r, "pkg", "pkg/data.txt", "pkg/tool.sh")
    has_dir(r, r.out / "pkg")
    has_file(r, r.out / "pkg" / "data.txt", "data\n")
    has_file(r, r.out / "pkg" / "tool.sh", mode=0o755)
    mtime = (r.out / "pkg" / "data.txt").stat().st_mtime
    assert mtime == STAMP_EPOCH, f"member mtime {mtime}, want the archive's {STAMP_EPOCH}"


def check_gzip(r: Run) -> None:
    ok(r)
    only(r, "f.gz")
    has_file(r, r.out / "f.gz")
    assert gzip.decompress((r.out / "f.gz").read_bytes()) == b"secret\n"
    mtime = (r.out / "f.gz").stat().st_mtime
    assert mtime == STAMP_EPOCH, f"mtime {mtime}, want that of the original f ({STAMP_EPOCH})"


def check_gunzip(r: Run) -> None:
    ok(r)
    only(r, "f")
    has_file(r, r.out / "f", WORDS)
    mtime = (r.out / "f").stat().st_mtime
    assert mtime == STAMP_EPOCH, f"mtime {mtime}, want that of f.gz ({STAMP_EPOCH})"


def check_zcat(r: Run) -> None:
    stdout_is(r, WORDS)


# --- checks: gcc and make -----------------------------------------------------


def runs_on_host(r: Run, exe: Path) -> None:
    """The binary is 0755 and its owner can run it on the host."""
    has_file(r, exe, mode=0o755)
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, check=False, timeout=10)
    assert (proc.returncode, proc.stdout) == (0, "hello, world\n"), proc


def check_make(r: Run) -> None:
    ok(r)
    only(r, "Makefile", "hello.c", "hello.o", "hello")
    has_file(r, r.out / "hello.o")
    runs_on_host(r, r.out / "hello")


def check_gcc(r: Run) -> None:
    ok(r)
    only(r, "x")
    runs_on_host(r, r.out / "x")


# --- checks: git -------------------------------------------------------------


def check_git_init_commit(r: Run) -> None:
    ok(r)
    repo = r.out / "repo"
    assert git_host("-C", str(repo), "log", "--format=%s %an") == "first Test User\n"
    assert git_host("-C", str(repo), "status", "--porcelain") == ""
    has_file(r, repo / "f", "hi\n")
    has_file(r, repo / ".git" / "config")
    has_dir(r, repo / ".git" / "objects")
    loose = [p for p in (repo / ".git" / "objects").rglob("*") if p.is_file()]
    assert len(loose) == 3, loose  # blob, tree, commit
    for obj in loose:
        has_file(r, obj, mode=0o444)  # git writes objects read-only
    assert not list(repo.rglob("*.lock")), "a git lock file was left behind"


def check_git_log(r: Run) -> None:
    stdout_is(r, "second\nfirst\n")


def check_git_status(r: Run) -> None:
    stdout_is(r, " M f\n")


def check_git_clone(r: Run) -> None:
    ok(r)
    clone = r.out / "clone"
    assert git_host("-C", str(clone), "log", "--format=%s") == "second\nfirst\n"
    has_file(r, clone / "f", "one\ntwo\n")
    has_dir(r, clone / ".git")
    assert git_host("-C", str(clone), "status", "--porcelain") == ""


# --- checks: sqlite3 ---------------------------------------------------------


def check_sqlite_create(r: Run) -> None:
    stdout_is(r, "3\n")
    only(r, "db.sqlite")  # the rollback journal came and went
    has_file(r, r.out / "db.sqlite")
    con = sqlite3.connect(f"file:{r.out / 'db.sqlite'}?mode=ro", uri=True)
    try:
        assert con.execute("select sum(x) from t").fetchone() == (3,)
    finally:
        con.close()


def check_sqlite_wal(r: Run) -> None:
    stdout_is(r, "wal\n2\n")
    only(r, "db.sqlite")  # the last connection checkpoints and removes -wal and -shm
    has_file(r, r.out / "db.sqlite")


def check_sqlite_read(r: Run) -> None:
    stdout_is(r, "7\n")


# --- checks: more archivers, patch, rsync ---------------------------------------


def check_xz_k(r: Run) -> None:
    ok(r)
    only(r, "f", "f.xz")
    has_file(r, r.out / "f", "secret\n")
    has_file(r, r.out / "f.xz")
    assert lzma.decompress((r.out / "f.xz").read_bytes()) == b"secret\n"


def check_bzip2(r: Run) -> None:
    ok(r)
    only(r, "f.bz2")
    has_file(r, r.out / "f.bz2")
    assert bz2.decompress((r.out / "f.bz2").read_bytes()) == b"secret\n"


def check_zip_r(r: Run) -> None:
    ok(r)
    only(r, "a.zip")  # zip writes a temporary file next to it, then renames it
    has_file(r, r.out / "a.zip")
    with zipfile.ZipFile(r.out / "a.zip") as z:
        assert z.read("a.txt") == A_TXT.encode()
        assert {"a.txt", "words", "d/b.txt", "d/run.sh"} <= set(z.namelist()), z.namelist()


def check_unzip(r: Run) -> None:
    ok(r)
    only(r, "pkg", "pkg/x.txt", "pkg/run.sh")
    has_dir(r, r.out / "pkg")
    has_file(r, r.out / "pkg" / "x.txt", "x\n")
    has_file(r, r.out / "pkg" / "run.sh", mode=0o755)


def check_cpio_i(r: Run) -> None:
    ok(r)
    has_file(r, r.out / "a.txt", A_TXT)
    has_file(r, r.out / "d" / "run.sh", mode=0o755)
    assert (r.out / "link").is_symlink() and str((r.out / "link").readlink()) == "d/b.txt"
    mtime = (r.out / "a.txt").stat().st_mtime
    want = int((r.inp / "a.txt").stat().st_mtime)  # newc keeps whole seconds
    assert mtime == want, f"mtime {mtime}, want the member's {want} (cpio -m keeps it)"


def check_rsync_a(r: Run) -> None:
    ok(r)
    copy = r.out / "copy"
    assert tree(copy) == tree(r.inp), (sorted(tree(copy)), sorted(tree(r.inp)))
    has_file(r, copy / "a.txt", A_TXT)
    has_file(r, copy / "d" / "run.sh", mode=0o755)
    assert (copy / "d" / "b.txt").stat().st_mtime == (r.inp / "d" / "b.txt").stat().st_mtime


def check_patch(r: Run) -> None:
    ok(r)
    only(r, "conf")  # no .orig or .rej left behind
    has_file(r, r.out / "conf", "color=blue\nsize=2\n")


# --- checks: more builds, git and sqlite3 ----------------------------------------


def check_make_j2(r: Run) -> None:
    ok(r)
    only(r, "Makefile", "a.c", "b.c", "a.o", "b.o", "prog")
    runs_on_host(r, r.out / "prog")


def check_static_lib(r: Run) -> None:
    ok(r)
    only(r, "b.o", "libgreet.a", "prog")
    has_file(r, r.out / "libgreet.a")
    runs_on_host(r, r.out / "prog")


def check_gpp(r: Run) -> None:
    ok(r)
    only(r, "h")
    runs_on_host(r, r.out / "h")


def check_git_stash(r: Run) -> None:
    ok(r)
    repo = r.out / "repo"
    has_file(r, repo / "f", "one\ntwo\n")
    assert git_host("-C", str(repo), "stash", "list", "--format=%gs").startswith("WIP on "), "no stash"
    assert git_host("-C", str(repo), "status", "--porcelain") == ""
    assert not list(repo.rglob("*.lock")), "a git lock file was left behind"


def check_sqlite_backup(r: Run) -> None:
    ok(r)
    only(r, "copy.db")
    has_file(r, r.out / "copy.db")
    con = sqlite3.connect(f"file:{r.out / 'copy.db'}?mode=ro", uri=True)
    try:
        assert con.execute("select sum(x) from t").fetchone() == (7,)
    finally:
        con.close()


def check_mkfifo(r: Run) -> None:
    stdout_is(r, "through\n")
    only(r)


# --- checks: servers and a real test suite -----------------------------------


def check_http_server(r: Run) -> None:
    assert not r.exited_early, f"the server exited with status {r.returncode} before it answered"
    assert r.stopped, "the server did not stop within its time after SIGTERM"
    assert r.fetched.get("/a.txt") == A_TXT.encode(), r.fetch_errors
    listing = r.fetched.get("/d/", b"").decode()
    assert "b.txt" in listing and "run.sh" in listing, (listing, r.fetch_errors)


def check_pytest_six(r: Run) -> None:
    ok(r)
    assert re.search(r"\b[1-9][0-9]* passed\b", r.stdout), r.stdout[-500:]
    assert " failed" not in r.stdout and " error" not in r.stdout, r.stdout[-500:]


def app_in_in(d: Dirs) -> None:
    """IN: a script that imports a module next to it."""
    write(d.inp / "helper.py", "def answer() -> int:\n    return 42\n")
    write(d.inp / "main.py", "import helper\nprint(helper.answer())\n")


def check_py_script(r: Run) -> None:
    stdout_is(r, "42\n")


def diff_setup(d: Dirs) -> None:
    """OUT/d: a copy of IN/d plus one extra file."""
    standard_input(d)
    shutil.copytree(d.inp / "d", d.out / "d")
    write(d.out / "d" / "extra", "extra\n")


# --- the table -----------------------------------------------------------------

S = standard_input
SIX_DIR = f"{{IN}}/six-{SIX_VERSION}"

CASES: list[Case] = [
    # coreutils & friends
    Case("cat", ("cat", "{IN}/a.txt"), check_cat, S),
    Case("ls-l", ("ls", "-l", "{IN}/d"), check_ls_l, S),
    Case("stat", ("stat", "{IN}/a.txt"), check_stat, S),
    Case("sort-o", ("sort", "{IN}/words", "-o", "{OUT}/sorted"), check_sort_o, S),
    Case("find-name", ("find", "{IN}", "-name", "*.txt"), check_find, S),
    Case("du-s", ("du", "-s", "{IN}"), check_du, S),
    Case("wc-l", ("wc", "-l", "{IN}/words"), check_wc, S),
    Case("cp-r", ("cp", "-r", "{IN}/d", "{OUT}/"), check_cp_r, S),
    Case("mv", ("mv", "{OUT}/old.txt", "{OUT}/new.txt"), check_mv, out_file("old.txt", "moved\n")),
    Case("mkdir-p", ("mkdir", "-p", "{OUT}/a/b"), check_mkdir_p, S),
    Case("rm-r", ("rm", "-r", "{OUT}/x"), check_rm_r, out_tree),
    Case("chmod", ("chmod", "600", "{OUT}/f"), check_chmod, out_file("f", "secret\n")),
    Case(
        "touch-d", ("touch", "-d", STAMP, "{OUT}/old", "{OUT}/new"), check_touch_d, out_file("old", "old\n")
    ),
    Case("ln-s", ("ln", "-s", "target.txt", "{OUT}/link"), check_ln_s, S),
    Case(
        "sed-i",
        ("sed", "-i", "s/red/blue/", "{OUT}/conf"),
        check_sed_i,
        out_file("conf", "color=red\nsize=2\n"),
    ),
    Case("awk", ("awk", "{print $1, length($1)}", "{IN}/words"), check_awk, S),
    Case("grep-r", ("grep", "-r", "needle", "{IN}"), check_grep_r, S),
    Case("readlink-f", ("readlink", "-f", "{IN}/link"), check_readlink_f, S),
    Case(
        "test-rw",
        ("sh", "-c", 'test -w "$1" && test -r "$2" && ! test -w "$2"', "sh", "{OUT}", "{IN}/a.txt"),
        check_test_w,
        S,
    ),
    Case("head", ("head", "-n", "2", "{IN}/words"), check_head, S),
    Case("tail", ("tail", "-n", "1", "{IN}/words"), check_tail, S),
    Case("sha256sum", ("sha256sum", "{IN}/a.txt"), check_sha256sum, S),
    Case("realpath", ("realpath", "{IN}/d/../link"), check_realpath, S),
    Case("tee", ("sh", "-c", 'tee "$2" < "$1"', "sh", "{IN}/a.txt", "{OUT}/copy"), check_tee, S),
    Case("diff-r", ("diff", "-r", "{IN}/d", "{OUT}/d"), check_diff_r, diff_setup),
    # archivers
    Case("tar-czf", ("tar", "czf", "{OUT}/a.tgz", "-C", "{IN}", "."), check_tar_czf, S),
    Case("tar-xzf", ("tar", "xzf", "{IN}/a.tgz", "-C", "{OUT}"), check_tar_xzf, archive_input),
    Case("gzip", ("gzip", "{OUT}/f"), check_gzip, plain_in_out),
    Case("gunzip", ("gunzip", "{OUT}/f.gz"), check_gunzip, gz_in_out),
    Case("zcat", ("zcat", "{IN}/f.gz"), check_zcat, archive_input),
    # more archivers, patch and rsync, typed from the directory the user works in
    Case("xz-k", ("xz", "-k", "f"), check_xz_k, plain_in_out, read=(), cwd="{OUT}"),
    Case("bzip2", ("bzip2", "{OUT}/f"), check_bzip2, plain_in_out, read=()),
    Case("zip-r", ("zip", "-q", "-r", "../out/a.zip", "."), check_zip_r, S, cwd="{IN}"),
    Case("unzip", ("unzip", "-q", "../in/a.zip"), check_unzip, zip_in_in, cwd="{OUT}"),
    Case("cpio-i", ("sh", "-c", "cpio -idm --quiet < ../in/a.cpio"), check_cpio_i, cpio_in_in, cwd="{OUT}"),
    Case("rsync-a", ("rsync", "-a", "{IN}/", "{OUT}/copy/"), check_rsync_a, S),
    Case("patch", ("patch", "-s", "-p1", "-i", "../in/fix.patch"), check_patch, patch_in_out, cwd="{OUT}"),
    # more builds: parallel make, a static library, C++
    Case("make-j2", ("make", "-s", "-j2"), check_make_j2, multi_c_in_out, read=(), cwd="{OUT}"),
    Case(
        "gcc-ar-ranlib",
        (
            "sh",
            "-c",
            "set -e; gcc -c ../in/b.c; ar rc libgreet.a b.o; ranlib libgreet.a; "
            "gcc -o prog ../in/a.c -L. -lgreet",
        ),
        check_static_lib,
        lib_c_in_in,
        cwd="{OUT}",
    ),
    Case("g++", ("g++", "-o", "{OUT}/h", "{IN}/h.cpp"), check_gpp, cpp_in_in),
    Case(
        "git-stash",
        ("git", *GIT_ID, "stash", "-q"),
        check_git_stash,
        repo_in_out,
        read=(),
        cwd="{OUT}/repo",
    ),
    Case(
        "sqlite3-backup",
        ("sqlite3", "{IN}/db.sqlite", ".backup {OUT}/copy.db"),
        check_sqlite_backup,
        db_in_in,
    ),
    Case(
        "mkfifo",
        ("sh", "-c", "mkfifo p && (echo through > p &) && cat p && rm p"),
        check_mkfifo,
        S,
        read=(),
        cwd="{OUT}",
    ),
    # a compiler and make; gcc needs a scratch /tmp, which cli-tool gives (bwrap: --tmpfs /tmp)
    Case("make", ("make", "-C", "{OUT}"), check_make, c_in_out, policy="cli-tool"),
    Case("gcc", ("gcc", "-o", "{OUT}/x", "{IN}/x.c"), check_gcc, c_in_in, policy="cli-tool"),
    # git
    Case(
        "git-init-commit",
        (
            "sh",
            "-c",
            'set -e; git init -q "$1"; echo hi > "$1/f"; git -C "$1" add f; '
            'git -C "$1" -c user.name="Test User" -c user.email=test@example.com commit -q -m first',
            "sh",
            "{OUT}/repo",
        ),
        check_git_init_commit,
        S,
    ),
    Case("git-log", ("git", "-C", "{IN}/repo", "log", "--format=%s"), check_git_log, repo_in_in, write=()),
    Case(
        "git-status",
        ("git", "-C", "{IN}/repo", "status", "--porcelain"),
        check_git_status,
        repo_in_in,
        write=(),
    ),
    Case("git-clone", ("git", "clone", "-q", "{IN}/repo", "{OUT}/clone"), check_git_clone, repo_in_in),
    # an embedded database
    Case(
        "sqlite3-create",
        (
            "sqlite3",
            "{OUT}/db.sqlite",
            "create table t(x); insert into t values (1), (2); select sum(x) from t;",
        ),
        check_sqlite_create,
        S,
    ),
    Case(
        "sqlite3-wal",
        (
            "sqlite3",
            "{OUT}/db.sqlite",
            "pragma journal_mode=wal; create table t(x); insert into t values (2); select x from t;",
        ),
        check_sqlite_wal,
        S,
    ),
    Case(
        "sqlite3-readonly",
        ("sqlite3", "-readonly", "{IN}/db.sqlite", "select sum(x) from t;"),
        check_sqlite_read,
        db_in_in,
        write=(),
    ),
    # web servers: an unmodified server listens on the granted address
    Case(
        "http.server",
        ("{PY}", "-m", "http.server", "{PORT}", "--bind", "127.0.0.1", "--directory", "{IN}"),
        check_http_server,
        S,
        write=(),
        policy="python",
        bind="127.0.0.1:{PORT}",
        fetch=("/a.txt", "/d/"),
    ),
    Case(
        "http.server-port80",
        ("{PY}", "-m", "http.server", "80", "--bind", "127.0.0.1", "--directory", "{IN}"),
        check_http_server,
        S,
        write=(),
        policy="python",
        bind="127.0.0.1:80",
        fetch=("/a.txt", "/d/"),
        modes=("root",),  # a non-root user cannot bind port 80, under bwrap or anywhere
    ),
    # nginx with its config in the read grant, on a high port and on port 80
    Case(
        "nginx",
        ("/usr/sbin/nginx", "-c", "{IN}/nginx.conf", "-e", "stderr"),
        check_http_server,
        nginx_in(None),
        write=(),
        bind="127.0.0.1:{PORT}",
        fetch=("/a.txt", "/d/"),
    ),
    Case(
        "nginx-port80",
        ("/usr/sbin/nginx", "-c", "{IN}/nginx.conf", "-e", "stderr"),
        check_http_server,
        nginx_in(80),
        write=(),
        bind="127.0.0.1:80",
        fetch=("/a.txt", "/d/"),
        modes=("root",),
    ),
    # a script that imports its sibling module, run from its directory
    Case(
        "python-script",
        ("{PY}", "main.py"),
        check_py_script,
        app_in_in,
        write=(),
        policy="python",
        cwd="{IN}",
    ),
    # the test suite of a real PyPI sdist; pytest captures output through temporary files,
    # so it needs a scratch /tmp: the plugin policy gives one (bwrap: --tmpfs /tmp)
    Case(
        "pytest-six",
        ("{PY}", "-m", "pytest", "-q", "-p", "no:cacheprovider", SIX_DIR),
        check_pytest_six,
        six_in_in,
        write=(),
        policy="plugin",
    ),
]
