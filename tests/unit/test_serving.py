"""Who serves a grant, what the kernel is told, and how the plan survives the trip to the forkserver."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from privsep import _linux as L
from privsep.errors import PolicyError
from privsep.hints import outside_view_hints
from privsep.plan import landlock, view, wire
from privsep.plan.spawnplan import SpawnPlan, make_plan
from privsep.policy.model import FileRule, Policy
from privsep.policy.serving import broker_reason


def rule(**kw: object) -> FileRule:
    return FileRule.model_validate({"path": "/srv/x", "access": ("read",), **kw})


@pytest.mark.parametrize(
    ("kw", "is_dir", "expected"),
    [
        ({}, True, None),
        ({"access": ("read", "write", "create", "truncate", "list")}, True, None),
        ({"access": ("read", "write")}, False, None),
        ({"access": ("append",)}, False, "append-only"),
        ({"access": ("read", "connect")}, False, "unix socket"),
        ({"recursive": False}, True, "exact directory"),
        ({"recursive": False}, False, None),
        ({"serve": "broker"}, True, 'serve = "broker"'),
    ],
)
def test_the_broker_serves_only_what_the_kernel_cannot(
    kw: dict[str, object], is_dir: bool, expected: str | None
) -> None:
    reason = broker_reason(rule(**kw), is_dir=is_dir)
    assert (reason is None) == (expected is None), reason
    if expected is not None:
        assert expected in str(reason)


def test_a_deny_rule_cannot_choose_who_serves_it() -> None:
    with pytest.raises(ValueError, match="serve"):
        FileRule.model_validate({"path": "/srv/x", "deny": True, "serve": "kernel"})


def test_landlock_rights_follow_the_access_words() -> None:
    assert landlock.grant_access(("read", "list"), True) == (
        L.ACCESS_FS_READ_FILE | L.ACCESS_FS_EXECUTE | L.ACCESS_FS_READ_DIR
    )
    write_only = landlock.grant_access(("write",), True)
    assert write_only == L.ACCESS_FS_WRITE_FILE  # no truncate, no create
    create = landlock.grant_access(("create",), True)
    assert create & L.ACCESS_FS_MAKE_REG and create & L.ACCESS_FS_REFER and create & L.ACCESS_FS_REMOVE_DIR
    assert not create & (L.ACCESS_FS_MAKE_CHAR | L.ACCESS_FS_MAKE_BLOCK)  # never devices
    # Landlock refuses directory rights on a file: they are dropped for a file grant.
    assert (
        landlock.grant_access(("read", "create", "list"), False)
        == L.ACCESS_FS_READ_FILE | L.ACCESS_FS_EXECUTE
    )


def _policy(tmp: Path, files: Sequence[Mapping[str, object]], *, tmp_view: bool = False) -> Policy:
    # As a policy file gives it (JSON arrays; the strict model takes tuples from Python).
    data = {
        "name": "t",
        "view": {"read": [str(tmp / "bin")], "tmp": tmp_view},
        "files": files,
        "syscalls": {"allow": ["@system-service"]},  # a plan's filter must let the sandbox start
    }
    return Policy.model_validate_json(json.dumps(data))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in ("bin", "rw/x/private", "rw/ro", "ro"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "rw" / "secret").write_text("s")
    return tmp_path


def test_plan_binds_grants_masks_denies_and_pins_their_ancestors(tree: Path) -> None:
    files: list[dict[str, object]] = [
        {"path": f"{tree}/rw", "access": ["read", "write", "create", "truncate", "list"]},
        {"path": f"{tree}/rw/ro", "access": ["read", "list"]},
        {"path": f"{tree}/rw/x/private", "deny": True},
        {"path": f"{tree}/rw/secret", "deny": True},
        {"path": f"{tree}/missing", "access": ["read"]},
        {"path": f"{tree}/ro", "access": ["append"]},
    ]
    plan = view.plan_grants(_policy(tree, files), root_broker=True, sandbox_id=65534)
    binds = {b.path: b for b in plan.view.binds}
    assert binds[f"{tree}/rw"].writable and not binds[f"{tree}/rw/ro"].writable
    owner = (os.stat(tree / "rw").st_uid, os.stat(tree / "rw").st_gid)
    assert binds[f"{tree}/rw"].idmap == owner  # a root broker idmaps every grant from its owner
    assert plan.kernel_served == (0, 1)
    reasons = dict(plan.broker_served)
    assert "does not exist" in reasons[4] and "append-only" in reasons[5]
    assert {(m.path, m.is_dir) for m in plan.view.masks} == {
        (f"{tree}/rw/x/private", True),
        (f"{tree}/rw/secret", False),
    }
    assert plan.view.pins == (f"{tree}/rw/x",)  # the ancestor between the grant and the mask
    assert {p for p, _ in plan.view.files} == {
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
        "/etc/hosts",
    }
    # Without root there is nothing to idmap: the child is the broker's own uid on the host.
    plain = view.plan_grants(_policy(tree, files), root_broker=False, sandbox_id=65534)
    assert all(b.idmap is None for b in plain.view.binds)


def test_a_grant_the_kernel_cannot_narrow_is_refused(tree: Path) -> None:
    outer = {"path": f"{tree}/rw", "access": ["read", "write", "create", "list"]}
    inner = {"path": f"{tree}/rw/ro", "access": ["read", "write", "list"]}  # no create: not expressible
    with pytest.raises(PolicyError, match=r"files\[1\].*an enclosing grant.*create"):
        view.plan_grants(_policy(tree, [outer, inner]), root_broker=True, sandbox_id=65534)
    # The private /tmp encloses grants below it with every right.
    partial = {"path": f"{tree}/rw", "access": ["read", "write", "list"]}
    if str(tree).startswith("/tmp/"):
        with pytest.raises(PolicyError, match="private /tmp"):
            view.plan_grants(_policy(tree, [partial], tmp_view=True), root_broker=True, sandbox_id=65534)
    view.plan_grants(_policy(tree, [partial]), root_broker=True, sandbox_id=65534)


def test_a_deny_that_cannot_be_masked_is_refused(tree: Path) -> None:
    grant = {"path": f"{tree}/rw", "access": ["read", "write", "create", "truncate", "list"]}
    with pytest.raises(PolicyError, match=r"does not exist.*mkdir -p"):
        view.plan_grants(
            _policy(tree, [grant, {"path": f"{tree}/rw/.git/hooks", "deny": True}]),
            root_broker=True,
            sandbox_id=65534,
        )
    (tree / "rw" / "link").symlink_to(tree / "rw" / "x")
    with pytest.raises(PolicyError, match="symbolic link"):
        view.plan_grants(
            _policy(tree, [grant, {"path": f"{tree}/rw/link/private", "deny": True}]),
            root_broker=True,
            sandbox_id=65534,
        )


def test_a_real_plan_round_trips_through_the_wire(tree: Path) -> None:
    files: list[dict[str, object]] = [
        {"path": f"{tree}/rw", "access": ["read", "write", "create", "truncate", "list"]},
        {"path": f"{tree}/rw/x/private", "deny": True},
    ]
    policy = _policy(tree, files)
    plan = make_plan(policy, ["/bin/true"])
    assert wire.decode(SpawnPlan, wire.encode(plan)) == plan
    assert plan.kernel_served == (0,)


def test_hints_name_hidden_paths_and_the_fix(tree: Path) -> None:
    plan = view.plan_grants(
        _policy(tree, [{"path": f"{tree}/ro", "access": ["read", "list"]}]),
        root_broker=True,
        sandbox_id=65534,
    ).view
    (tree / "hidden.txt").write_text("h")
    hints = outside_view_hints(
        ["cat", "hidden.txt", f"--out={tree}/rw/new.txt", "ro/f", "plainword", "ro/new/x"],
        str(tree),
        "/",
        plan,
    )
    assert (
        f"{tree}/hidden.txt is outside the sandbox; re-run with --allow-read={tree} "
        f"(or --allow-write={tree} if it writes there)"
    ) in hints
    assert any(
        h.startswith(f"{tree}/rw/new.txt cannot be created") and f"--allow-write={tree}/rw" in h
        for h in hints
    )
    assert not any("plainword" in h for h in hints)  # not a path: never guessed at
    assert not any("ro/new" in h for h in hints)  # its directory does not exist on the host either
    assert not any("working directory" in h for h in hints)  # on the way to a grant: in the view
    hints = outside_view_hints(["ls"], str(tree / "rw"), "/", plan)
    assert hints[0].startswith(
        f"the working directory {tree}/rw is outside the sandbox, so the command ran in /"
    )


def test_hints_read_scripts_destinations_and_the_working_directory(tree: Path) -> None:
    """The fix named is one that works: --allow-write for a path a script or a copy writes
    into; the working directory only where it may be the cause, never a home-wide grant."""
    plan = view.plan_grants(
        _policy(tree, [{"path": f"{tree}/ro", "access": ["read", "list"]}]),
        root_broker=True,
        sandbox_id=65534,
    ).view
    (tree / "dest").mkdir()
    (tree / "hidden.txt").write_text("h")
    (tree / "ro" / "f").write_text("f")
    # A shell script's redirection into a read-only grant (the kernel's EROFS; no broker call).
    hints = outside_view_hints(["sh", "-c", f"echo x > {tree}/ro/y"], "/root", "/", plan)
    assert hints == [
        f"{tree}/ro/y cannot be created: {tree}/ro is read-only in the sandbox; "
        f"if the command creates it, re-run with --allow-write={tree}/ro"
    ]
    # An unbalanced quote is not a script: nothing is guessed from it.
    assert outside_view_hints(["sh", "-c", f"echo 'x > {tree}/ro/y"], "/", "/", plan) == []
    # The last of several existing paths, a directory: the copy's destination.
    hints = outside_view_hints(["cp", f"{tree}/ro/f", f"{tree}/dest/"], "/root", "/", plan)
    assert hints == [f"{tree}/dest is outside the sandbox; re-run with --allow-write={tree}/dest"]
    # Absolute arguments that explain the failure: the working directory is not named, and
    # neither is one whose grant a path hint already suggests.
    hints = outside_view_hints(["cat", f"{tree}/hidden.txt"], str(tree / "dest"), "/", plan)
    assert not any("working directory" in h for h in hints)
    hints = outside_view_hints(["cat", "hidden.txt"], str(tree), "/", plan)
    assert len(hints) == 1 and "working directory" not in hints[0]
    # A home directory is too broad a grant to suggest, whatever failed.
    assert outside_view_hints(["false"], "/root", "/", plan) == []


def test_hints_name_a_read_grant_that_a_failing_command_may_have_written(tree: Path) -> None:
    """A write into an existing file of a read grant fails with the kernel's EROFS, which no
    broker sees: the path on the command line gets a conditional line, last, and only when
    nothing else explains the failure; a copy's destination there gets the plain fix."""
    plan = view.plan_grants(
        _policy(tree, [{"path": f"{tree}/ro", "access": ["read", "list"]}]),
        root_broker=True,
        sandbox_id=65534,
    ).view
    (tree / "ro" / "f").write_text("f")
    (tree / "ro" / "d").mkdir()
    line = (
        f"{tree}/ro/f is read-only in the sandbox (a read grant); "
        f"if the command writes it, re-run with --allow-write={tree}/ro"
    )
    assert outside_view_hints(["sed", "-i", "s/a/b/", f"{tree}/ro/f"], "/", "/", plan) == [line]
    assert outside_view_hints(["sh", "-c", f"touch {tree}/ro/f"], "/", "/", plan) == [line]
    # The report named a cause already (a denial, an exec error): nothing is guessed.
    assert outside_view_hints(["touch", f"{tree}/ro/f"], "/", "/", plan, explained=True) == []
    # Another line explains it: the read-only source of a copy is not named.
    (tree / "hidden").mkdir()
    assert outside_view_hints(["cp", f"{tree}/ro/f", f"{tree}/hidden"], "/", "/", plan) == [
        f"{tree}/hidden is outside the sandbox; re-run with --allow-write={tree}/hidden"
    ]
    # A copy into a directory of the read grant: written into, so the plain fix, for it alone.
    assert outside_view_hints(["cp", f"{tree}/ro/f", f"{tree}/ro/d"], "/", "/", plan) == [
        f"{tree}/ro/d is read-only in the sandbox; re-run with --allow-write={tree}/ro/d"
    ]
    # A path under the policy's own [view] read (not a grant) is never suggested for writing.
    (tree / "bin" / "tool").write_text("t")
    assert outside_view_hints(["touch", f"{tree}/bin/tool"], "/", "/", plan) == []


def test_hints_never_send_the_user_to_grant_the_sandboxs_own_proc_or_dev(tree: Path) -> None:
    """/proc and /dev in the view are the sandbox's own (its procfs, its devices): a failed
    ``cat /proc/self/status`` or ``> /dev/null`` once printed "re-run with --allow-read=/proc/self"."""
    plan = view.plan_grants(_policy(tree, [], tmp_view=True), root_broker=True, sandbox_id=65534).view
    assert plan.tmp_size_mb is not None  # a /tmp of its own
    argv = ["sh", "-c", "cat /proc/self/status /proc/1/environ > /dev/null; ls /dev/sda /tmp"]
    assert outside_view_hints(argv, "/", "/", plan) == []
