"""Fuzz path resolution in the file broker (``FileService``) on a real tree with traps planted in it.

The tree (under a temporary TOP)::

    outside/canary, outside/dir/inner                   never granted
    grant/f1, grant/a/f2, grant/a/b/f3, grant/fifo, grant2/g, grantx/g
    grant/in_file -> a/f2, grant/in_dir -> a, grant/a/dotdot_in -> ../f1        inside
    grant/up -> .., grant/out_file -> ../outside/canary, grant/out_dir -> ../outside,
    grant/a/deep_out -> ../../outside/canary, grant/abs_out -> TOP/outside/canary,
    grant/proc_out -> /proc/self/root/TOP/outside/canary, grant/loop -> loop    outside

Four policies grant parts of it (with and without ``symlinks``, a deny rule
inside a grant, an exact grant of a symlink). An input picks an operation
(open in every mode, stat, listdir, mkdir, unlink, rename), a policy and a
path: components from the tree's names, ``..``, ``.``, empty and NUL, or
raw text. The properties:

- the service answers or raises ``Refusal``, nothing else;
- an fd it returns, or a ``stat`` result, is an entry beneath the policy's
  grants (an exact file grant that follows symlinks: beneath its directory),
  never the canary; a listing never shows ``outside``'s names;
- nothing outside the grants ever changes, and a refusal changes nothing.

``python -m fuzz.paths_fuzz --runs N`` (or ``python -m fuzz`` for every harness).
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from fuzz._driver import instrumented, run, scratch_dir, wants_plain

with instrumented(wants_plain()):
    from privsep.broker.answers import Answer, Refusal
    from privsep.broker.files import FileService
    from privsep.policy.model import Policy

FILES = [
    "outside/canary",
    "outside/dir/inner",
    "grant/f1",
    "grant/a/f2",
    "grant/a/b/f3",
    "grant2/g",
    "grantx/g",
]
SYMLINKS = {
    "grant/in_file": "a/f2",
    "grant/in_dir": "a",
    "grant/a/dotdot_in": "../f1",
    "grant/up": "..",
    "grant/out_file": "../outside/canary",
    "grant/out_dir": "../outside",
    "grant/a/deep_out": "../../outside/canary",
    "grant/abs_out": "{top}/outside/canary",
    "grant/proc_out": "/proc/self/root{top}/outside/canary",
    "grant/loop": "loop",
}
COMPONENTS = [
    "grant",
    "grant2",
    "grantx",
    "outside",
    "canary",
    "dir",
    "inner",
    "a",
    "b",
    "f1",
    "f2",
    "f3",
    "g",
    "fifo",
    "new",
    *sorted({p.rsplit("/", 1)[1] for p in SYMLINKS}),
    "..",
    ".",
    "",
    "\x00",
]
ALL = ["read", "write", "create", "append", "truncate", "list"]
#: (rules relative to TOP, what each may reach: (path relative to TOP, whole subtree?))
POLICIES: list[tuple[list[dict[str, object]], list[tuple[str, bool]]]] = [
    ([{"path": "grant", "access": ALL, "symlinks": True}], [("grant", True)]),
    ([{"path": "grant", "access": ALL}], [("grant", True)]),
    (
        [{"path": "grant/a", "access": ALL}, {"path": "grant/a/b", "deny": True}],
        [("grant/a", True)],
    ),
    (
        [{"path": "grant/in_file", "access": ["read"], "symlinks": True}, {"path": "grant2", "access": ALL}],
        [("grant", True), ("grant2", True)],  # the exact grant of a symlink resolves beneath its directory
    ),
]
OPS = ["r", "r+", "w", "w+", "a", "a+", "x", "x+", "stat", "listdir", "mkdir", "unlink", "rename"]

Snapshot = dict[str, tuple[int, int, int, int]]


class World:
    """The tree and one FileService per policy; rebuilt after anything changed it."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="tree-", dir=scratch_dir()))
        self.services: list[FileService] = []
        self.build()

    def build(self) -> None:
        for service in self.services:
            service.close()
        for entry in self.top.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for rel in FILES:
            (self.top / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.top / rel).write_text(rel)
        os.mkfifo(self.top / "grant/fifo")
        for rel, target in SYMLINKS.items():
            os.symlink(target.format(top=self.top), self.top / rel)
        self.services = []
        for rules, _ in POLICIES:
            files = tuple({**rule, "path": f"{self.top}/{rule['path']}"} for rule in rules)
            self.services.append(FileService(Policy.model_validate({"name": "fuzz", "files": files})))
        self.initial = self.snapshot()
        canary = os.lstat(self.top / "outside/canary")
        self.canary = (canary.st_dev, canary.st_ino)

    def snapshot(self) -> Snapshot:
        found: Snapshot = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            for name in [*dirnames, *filenames, ""]:
                full = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(full)
                found[os.path.relpath(full, self.top)] = (st.st_dev, st.st_ino, st.st_mode, st.st_size)
        return found

    def close(self) -> None:
        for service in self.services:
            service.close()
        shutil.rmtree(self.top, ignore_errors=True)


def within(rel: str, scopes: list[tuple[str, bool]]) -> bool:
    return any(rel == root or (subtree and rel.startswith(root + "/")) for root, subtree in scopes)


_world: World | None = None


def world() -> World:
    global _world
    if _world is None:
        _world = World()
        atexit.register(_world.close)
    return _world


def decode(data: bytes, top: Path) -> tuple[str, int, str, str]:
    """(op, policy index, path, rename destination) from an input."""
    head = data[:4].ljust(4, b"\x00")
    op, policy, style, dst = OPS[head[0] % len(OPS)], head[1] % len(POLICIES), head[2], head[3]
    body = data[4:]
    if style & 1:
        tail = body.decode("utf-8", "replace")
    else:
        tail = "/".join(COMPONENTS[b % len(COMPONENTS)] for b in body[:24])
    lead = [f"{top}/", f"{top}/grant/", "/", ""][(style >> 1) % 4]
    return op, policy, lead + tail, f"{top}/grant/{COMPONENTS[dst % len(COMPONENTS)]}"


def perform(service: FileService, op: str, path: str, dst: str) -> Answer:
    if op == "stat":
        return service.stat(path)
    if op == "listdir":
        return service.listdir(path)
    if op == "mkdir":
        return service.mkdir(path)
    if op == "unlink":
        return service.unlink(path)
    if op == "rename":
        return service.rename(path, dst)
    return service.open(path, op)


def test_one_input(data: bytes) -> None:
    w = world()
    op, index, path, dst = decode(data, w.top)
    _, scopes = POLICIES[index]
    before = w.snapshot()
    try:
        answer = perform(w.services[index], op, path, dst)
    except Refusal:
        assert w.snapshot() == before, f"a refused {op} changed the tree ({path!r})"
        return
    try:
        after = w.snapshot()
        changed = {rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)}
        assert all(within(rel, scopes) for rel in changed), f"{op} {path!r} changed {changed}"
        reachable = {entry[:2] for rel, entry in after.items() if within(rel, scopes)}
        if answer.fd is not None:
            st = os.fstat(answer.fd)
            assert (st.st_dev, st.st_ino) != w.canary, f"the canary was handed out for {op} {path!r}"
            assert (st.st_dev, st.st_ino) in reachable, f"an fd outside the grants for {op} {path!r}"
            assert stat.S_ISREG(st.st_mode)
        if op == "stat":
            identity = (answer.result["dev"], answer.result["ino"])
            assert identity != w.canary and identity in reachable, f"stat outside the grants: {path!r}"
        if op == "listdir":
            names = answer.result["names"]
            assert isinstance(names, list)
            assert "canary" not in names and "inner" not in names, f"outside was listed: {path!r}"
    finally:
        if answer.fd is not None:
            os.close(answer.fd)
    if changed:
        w.build()


SEEDS = [
    bytes([0, 0, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "out_file")]),
    bytes([0, 0, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "up", "outside", "canary")]),
    bytes([8, 0, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "out_dir", "canary")]),
    bytes([1, 2, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "a", "deep_out")]),
    bytes([0, 0, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "proc_out")]),
    bytes([0, 0, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "abs_out")]),
    bytes([9, 0, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "in_dir")]),
    bytes([0, 3, 0, 0]) + bytes([COMPONENTS.index(c) for c in ("grant", "in_file")]),
    bytes([12, 0, 0, COMPONENTS.index("up")]) + bytes([COMPONENTS.index(c) for c in ("grant", "f1")]),
    bytes([6, 1, 1, 0]) + b"grant/a/new",
    bytes([0, 1, 1, 0]) + b"grant/../outside/canary",
]


def main() -> int:
    return run("paths", test_one_input, SEEDS, [c.encode() for c in COMPONENTS if c] + [b"/"])


if __name__ == "__main__":
    sys.exit(main())
