"""``privsep doctor``'s verdict on made-up kernels: each missing layer is named, with its fix.

The probing half runs against the real kernel in tests/integration/test_tooling.py;
here :func:`privsep.doctor.layers` gets facts no CI machine has.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from privsep import doctor
from privsep.broker import notify
from privsep.doctor import Facts, Layer, Probe, layers, ready, render_text

GOOD = Facts(
    kernel="6.12.0",
    machine="x86_64",
    euid=1000,
    landlock_abi=6,
    landlock_lsm=True,
    seccomp_actions=("kill_process", "errno", "user_notif", "allow"),
    seccomp_filter=Probe(),
    seccomp_listener=Probe(),
    max_user_namespaces=1000,
    trial=Probe(),
)
GOOD_ROOT = dataclasses.replace(
    GOOD, euid=0, host_id_range="2000000000-2000065535 (the default)", host_ids_claimed=3
)


def row(facts: Facts, prefix: str) -> Layer:
    (found,) = [r for r in layers(facts) if r.name.startswith(prefix)]
    return found


def test_a_machine_with_every_layer_is_ready() -> None:
    rows = layers(GOOD_ROOT)
    assert ready(rows)
    assert all(r.applied for r in rows)
    assert render_text(GOOD_ROOT, rows).rstrip().endswith("every layer privsep run needs is available here")


def test_a_root_broker_reports_its_host_id_range_and_claims() -> None:
    found = row(GOOD_ROOT, "4b host id per sandbox")
    assert found.applied
    assert "from 2000000000-2000065535 (the default), no account or subordinate range in it" in found.detail
    assert "3 claimed now" in found.detail
    text = render_text(GOOD_ROOT, layers(GOOD_ROOT))
    assert "host ids          2000000000-2000065535 (the default): 3 claimed, 0 stale" in text


def test_a_root_broker_without_a_usable_range_is_not_ready() -> None:
    why = "privsep's host id range 1000-1999 (PRIVSEP_IDS) must hold at least one id and lie within"
    facts = dataclasses.replace(GOOD_ROOT, host_ids=Probe(why))
    found = row(facts, "4 identity")
    assert not found.applied and why in found.detail
    assert not ready(layers(facts))


@pytest.mark.parametrize("granted", [0, 65536])
def test_a_non_root_broker_says_what_isolation_it_lacks(granted: int) -> None:
    facts = dataclasses.replace(GOOD, subordinate_ids=granted)
    assert ready(layers(facts))  # nothing privsep run needs is missing: it is a weaker mode
    found = row(facts, "4b host id per sandbox")
    assert (found.applied, found.required, found.status) == (False, False, "absent")
    for lost in (
        "runs as you (uid 1000)",
        "acts as you on the files",
        "signal and trace it",
        "add up with yours",
    ):
        assert lost in found.detail
    assert ("grants you 65536 subordinate ids, which privsep does not use" in found.detail) == bool(granted)
    assert "run the broker as root for an id of its own per sandbox" in found.detail
    assert "uid/gid 65534, which is your uid 1000 on the host" in row(facts, "4 identity").detail


@pytest.mark.parametrize(
    ("change", "layer", "why"),
    [
        ({"landlock_abi": 2}, "6 Landlock", "ABI 2, privsep needs 3"),
        ({"landlock_abi": 0, "landlock_lsm": False}, "6 Landlock", "add landlock to the lsm= boot parameter"),
        ({"landlock_abi": 0, "landlock_lsm": None}, "6 Landlock", "Linux 6.2 or later"),
        (
            {"seccomp_listener": Probe("EINVAL (Invalid argument)"), "seccomp_actions": ("errno", "allow")},
            "7 seccomp",
            "no seccomp user notification",
        ),
        (
            {"seccomp_filter": Probe("ENOSYS (Function not implemented)")},
            "7 seccomp",
            "CONFIG_SECCOMP_FILTER",
        ),
        ({"openat2": Probe("ENOSYS (Function not implemented)")}, "broker: files", "Linux 5.6 or later"),
        ({"pidfd": Probe("ENOSYS (Function not implemented)")}, "broker: children", "Linux 5.3 or later"),
        ({"close_range": Probe("ENOSYS (Function not implemented)")}, "1-2 session", "Linux 5.9 or later"),
        ({"mount_setattr": Probe("ENOSYS (Function not implemented)")}, "3b filesystem", "Linux 5.12"),
        ({"trial": Probe("confinement step 'filesystem' failed: x")}, "trial", "step 'filesystem'"),
        (
            {"cgroup_use": Probe("uid 1000 cannot make cgroups in /sys/fs/cgroup/user.slice")},
            "0 cgroup",
            'pass --no-cgroups or set [limits] cgroups = "optional"',
        ),
    ],
)
def test_a_missing_layer_is_named_with_its_fix_and_fails_the_verdict(
    change: dict[str, object], layer: str, why: str
) -> None:
    facts = dataclasses.replace(GOOD, **change)  # type: ignore[arg-type]
    found = row(facts, layer)
    assert not found.applied
    assert found.status.endswith("privsep run will refuse to start")
    assert why in found.detail
    rows = layers(facts)
    assert not ready(rows)
    assert (
        f"verdict: NOT ready; privsep run will refuse to start here (missing: {found.name})"
        in render_text(facts, rows)
    )


def test_no_synchronous_wake_up_is_said_and_does_not_fail_the_verdict() -> None:
    """A kernel before 6.6: brokered calls are slower there, never less confined."""
    facts = dataclasses.replace(GOOD, seccomp_sync_wakeup=Probe("ENOSYS (Function not implemented)"))
    found = row(facts, "broker: synchronous wake-up")
    assert not found.applied and not found.required and found.status == "absent"
    assert "it needs Linux 6.6 or later" in found.detail and "confined the same" in found.detail
    rows = layers(facts)
    assert ready(rows)
    assert "synchronous wake-up: no (ENOSYS (Function not implemented))" in render_text(facts, rows)
    assert row(GOOD, "broker: synchronous wake-up").applied


def test_synchronous_wake_up_on_what_is_not_a_listener_is_refused_quietly() -> None:
    """The broker asks it of every listener; an fd the ioctl does not fit is not an error."""
    r, w = os.pipe()
    try:
        assert notify.set_sync_wakeup(r) is False
    finally:
        os.close(r)
        os.close(w)


def test_no_user_namespaces_for_a_non_root_broker_says_how_to_enable_them() -> None:
    facts = dataclasses.replace(
        GOOD,
        namespaces=Probe("EPERM (Operation not permitted)"),
        userns_sysctls={"kernel.unprivileged_userns_clone": 0},
    )
    found = row(facts, "3 namespaces")
    assert not found.applied
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in found.detail
    assert "or run privsep as root" in found.detail
    assert not row(facts, "4 identity").applied
    assert not row(facts, "3b filesystem").applied


def test_older_landlock_is_applied_without_its_newer_features() -> None:
    found = row(dataclasses.replace(GOOD, landlock_abi=3), "6 Landlock")
    assert found.applied
    assert "no TCP rules (ABI 4)" in found.detail and "no scopes (ABI 6)" in found.detail


def test_a_root_broker_needs_no_unprivileged_user_namespace() -> None:
    """Init creates the sandbox's user namespace with CAP_SYS_ADMIN (then as the host id it becomes)."""
    facts = dataclasses.replace(GOOD_ROOT, unprivileged_userns=Probe("EPERM (Operation not permitted)"))
    assert ready(layers(facts))
    assert (
        "a user namespace init makes later, as the sandbox's own host id" in row(facts, "3 namespaces").detail
    )


def test_doctor_exits_1_when_a_layer_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "probe", lambda: dataclasses.replace(GOOD, landlock_abi=1))
    assert doctor.doctor_command(as_json=False) == 1
    assert (
        "verdict: NOT ready; privsep run will refuse to start here (missing: 6 Landlock)"
        in capsys.readouterr().out
    )
    assert doctor.doctor_command(as_json=True) == 1
    assert '"ready": false' in capsys.readouterr().out


def test_subordinate_ids_are_found_by_uid_or_name(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("4242:100000:65536\nroot:200000:10\nbob:300000:5\nbroken line\n4242:400000:7\n")
    assert doctor._subordinate_ids(4242, str(subuid)) == 65536 + 7
    assert doctor._subordinate_ids(0, str(subuid)) == 10  # by name: root
    assert doctor._subordinate_ids(4242, str(tmp_path / "missing")) == 0
