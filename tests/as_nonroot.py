"""Run a command as an unprivileged uid, even from a checkout that uid cannot reach.

Usage (as root): ``python -m tests.as_nonroot UID REPO [--no-delegation] -- COMMAND [ARG...]``

The non-root broker tests need the checkout (its ``.venv`` and the privsep
package) to be readable by the test uid. A clone under a 0700 directory
(``/root``, ``mktemp -d``) is not. Changing host permissions is not a
test's business. Instead, in a private mount namespace, the first ancestor
the uid cannot traverse is covered with an empty 0755 tmpfs, and the
checkout is bound back at the same path; a checkout that is itself 0700
becomes a 0755 tmpfs holding each of its entries bound back. Every path stays the same, and the
host is untouched. Then, as systemd's ``Delegate=`` would, the uid is given
a cgroup of its own and this process moves into it (``tests/cgroup_delegation.py``;
not with ``--no-delegation``, which shows a host that delegates nothing).
Then the groups are dropped, the uid/gid are set, and COMMAND is exec'd.
"""

from __future__ import annotations

import os
import stat
import sys

from privsep import _linux
from tests import cgroup_delegation


def _blocking_ancestor(path: str, uid: int) -> str | None:
    """The topmost directory down to ``path`` itself that ``uid`` (no groups) cannot search."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:i])
        st = os.stat(ancestor)
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXOTH
        if not st.st_mode & bit:
            return ancestor
    return None


def _open_up(repo: str) -> None:
    """The checkout itself is 0700 (``mktemp -d``): a fresh 0755 directory in its place,
    holding each of its entries bound back at the same path."""
    cwd = os.getcwd()
    entries = [
        (name, os.open(os.path.join(repo, name), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC))
        for name in os.listdir(repo)
    ]
    _linux.mount("tmpfs", repo, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "mode=0755")
    for name, fd in entries:
        target = os.path.join(repo, name)
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(f"/proc/self/fd/{fd}"), target)
        else:
            if stat.S_ISDIR(mode):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            _linux.mount(f"/proc/self/fd/{fd}", target, None, _linux.MS_BIND | _linux.MS_REC)
        os.close(fd)
    os.chdir(cwd)  # the old working directory is the hidden 0700 one: look the path up again


def main(argv: list[str]) -> int:
    uid, repo, *rest = argv
    delegation = rest[:1] != ["--no-delegation"]
    sep, *command = rest if delegation else rest[1:]
    if sep != "--" or not command:
        print(__doc__, file=sys.stderr)
        return 2
    uid_n = int(uid)
    if delegation:
        cgroup_delegation.delegate(uid_n)
    blocked = _blocking_ancestor(repo, uid_n)
    if blocked is not None:
        _linux.unshare(_linux.CLONE_NEWNS)
        _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    if blocked is not None and blocked != repo:
        # Opened only now: a bind source must be a mount of the current namespace.
        keep = os.open(repo, os.O_PATH | os.O_CLOEXEC)
        _linux.mount("tmpfs", blocked, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, "mode=0755")
        os.makedirs(repo, mode=0o755, exist_ok=True)
        _linux.mount(f"/proc/self/fd/{keep}", repo, None, _linux.MS_BIND | _linux.MS_REC)
        os.close(keep)
    if blocked is not None and _blocking_ancestor(repo, uid_n) == repo:
        _open_up(repo)
    os.setgroups([])
    os.setresgid(uid_n, uid_n, uid_n)
    os.setresuid(uid_n, uid_n, uid_n)
    os.execv(command[0], command)
    return 127  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
