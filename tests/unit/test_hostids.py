"""The host id range of root brokers and the claims on it (``privsep/plan/hostids.py``).

The account databases are injected (a made-up ``/etc`` in a temporary
directory) and claims are made in a temporary lock directory, so these tests
touch nothing of the host's. The real range and lock directory are exercised
by tests/integration/test_host_ids.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import pytest

from privsep.errors import ConfinementError
from privsep.plan import hostids
from privsep.plan.hostids import IdRange, census, check_range, claim, configured_range

PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"  # noqa: S105
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def fake_etc(tmp_path: Path, **files: str) -> str:
    """A made-up /etc: passwd and group as above unless given, plus any other file."""
    etc = tmp_path / "etc"
    etc.mkdir(parents=True)
    for name, text in {"passwd": PASSWD, "group": GROUP, **files}.items():
        (etc / name).write_text(text)
    return str(etc)


def test_the_default_range_lies_where_no_one_allocates(tmp_path: Path) -> None:
    ids = configured_range({}, etc=fake_etc(tmp_path))
    assert (ids.first, ids.count, ids.source) == (2_000_000_000, 65536, "the default")
    assert str(ids) == "2000000000-2000065535"
    assert ids.last < 2147352576  # below systemd's foreign range, and below 2^31
    assert ids.first > 600100000  # above useradd's default subordinate ids (and systemd's containers)
    check_range(ids, etc=fake_etc(tmp_path / "again"))


def test_the_environment_overrides_the_range(tmp_path: Path) -> None:
    ids = configured_range({"PRIVSEP_IDS": "3000000:100"}, etc=fake_etc(tmp_path))
    assert ids == IdRange(3000000, 100, "PRIVSEP_IDS")
    with pytest.raises(ConfinementError, match=r"PRIVSEP_IDS: '3000000' is not FIRST:COUNT"):
        configured_range({"PRIVSEP_IDS": "3000000"}, etc=fake_etc(tmp_path / "again"))


def test_a_privsep_entry_in_subuid_and_subgid_reserves_the_range(tmp_path: Path) -> None:
    etc = fake_etc(
        tmp_path, subuid="alice:100000:65536\nprivsep:1000000:5000\n", subgid="privsep:1000000:5000\n"
    )
    ids = configured_range({}, etc=etc)
    assert (ids.first, ids.count) == (1000000, 5000)
    assert "subuid" in ids.source
    check_range(ids, etc=etc)  # its own entries do not count as an overlap


def test_subuid_and_subgid_entries_that_disagree_are_refused(tmp_path: Path) -> None:
    etc = fake_etc(tmp_path, subuid="privsep:1000000:5000\n", subgid="privsep:2000000:5000\n")
    with pytest.raises(ConfinementError, match="one and the same 'privsep' entry"):
        configured_range({}, etc=etc)


def test_a_range_holding_an_account_is_refused(tmp_path: Path) -> None:
    etc = fake_etc(tmp_path, passwd=PASSWD + "builder:x:2000000500:100::/home/builder:/bin/sh\n")
    with pytest.raises(ConfinementError) as caught:
        check_range(IdRange(2_000_000_000, 65536), etc=etc)
    message = str(caught.value)
    assert "holds 2000000500, the id of the user 'builder'" in message
    assert "PRIVSEP_IDS=FIRST:COUNT" in message
    check_range(IdRange(2_000_000_000, 500), etc=etc)  # just below it: fine


def test_a_range_holding_a_group_is_refused(tmp_path: Path) -> None:
    etc = fake_etc(tmp_path, group=GROUP + "ci:x:2000000000:\n")
    with pytest.raises(ConfinementError, match="the id of the group 'ci'"):
        check_range(IdRange(2_000_000_000, 10), etc=etc)


@pytest.mark.parametrize("kind", ["subuid", "subgid"])
def test_a_range_overlapping_someone_elses_subordinate_ids_is_refused(tmp_path: Path, kind: str) -> None:
    etc = fake_etc(tmp_path, **{kind: "alice:1999990000:65536\n"})
    with pytest.raises(
        ConfinementError, match=r"overlaps the subordinate ids 1999990000-2000055535 .*'alice'"
    ):
        check_range(IdRange(2_000_000_000, 65536), etc=etc)


@pytest.mark.parametrize(
    "ids",
    [IdRange(60000, 10), IdRange(65534, 1), IdRange(2**31 - 5, 10), IdRange(3000000, 0)],
    ids=["16-bit", "nobody", "past-2^31", "empty"],
)
def test_a_range_out_of_bounds_is_refused(tmp_path: Path, ids: IdRange) -> None:
    with pytest.raises(ConfinementError, match="must hold at least one id and lie within 65536-2147483647"):
        check_range(ids, etc=fake_etc(tmp_path))


# --- claims ------------------------------------------------------------------------------------


@pytest.fixture
def lock_dir(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "ids")


def test_claims_are_distinct_and_released_without_a_trace(lock_dir: str) -> None:
    ids = IdRange(3000000, 4)
    held = [claim(ids, lock_dir=lock_dir) for _ in range(4)]
    assert sorted(h.id for h in held) == [3000000, 3000001, 3000002, 3000003]
    assert stat_mode(lock_dir) == 0o700
    assert census(ids, lock_dir=lock_dir) == (4, 0)
    with pytest.raises(ConfinementError, match=r"every id of privsep's range 3000000-3000003 .* is held"):
        claim(ids, lock_dir=lock_dir)
    for h in held:
        h.release()
        h.release()  # idempotent
    assert os.listdir(lock_dir) == []
    assert census(ids, lock_dir=lock_dir) == (0, 0)


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o7777


def test_a_lock_held_by_another_process_is_respected(lock_dir: str) -> None:
    ids = IdRange(3000000, 1)
    first = claim(ids, lock_dir=lock_dir)
    first.release()
    os.makedirs(lock_dir, exist_ok=True)
    fd = os.open(f"{lock_dir}/3000000", os.O_RDWR | os.O_CREAT, 0o600)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - holds the lock until killed
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(w, b"x")
        signal.pause()
        os._exit(0)
    os.close(fd)  # only the other process holds the file now
    try:
        assert os.read(r, 1) == b"x"
        with pytest.raises(ConfinementError, match="is held by a live sandbox"):
            claim(ids, lock_dir=lock_dir)
        assert census(ids, lock_dir=lock_dir) == (1, 0)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    # Killed: the kernel dropped its lock; the file it left is a free id, taken over and then removed.
    assert census(ids, lock_dir=lock_dir) == (0, 1)
    again = claim(ids, lock_dir=lock_dir)
    assert again.id == 3000000
    again.release()
    assert os.listdir(lock_dir) == []


def test_a_lock_directory_others_may_write_is_refused(lock_dir: str) -> None:
    os.makedirs(lock_dir)
    os.chmod(lock_dir, 0o777)  # noqa: S103 - the mistake under test
    with pytest.raises(ConfinementError, match=r"only privsep .* may write there"):
        claim(IdRange(3000000, 1), lock_dir=lock_dir)


def test_the_checked_range_is_cached_per_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVSEP_IDS", "2100000000:7")
    assert hostids.current_range() == IdRange(2100000000, 7, "PRIVSEP_IDS")
    monkeypatch.setenv("PRIVSEP_IDS", "12:7")
    with pytest.raises(ConfinementError, match="must hold at least one id"):
        hostids.current_range()


def test_a_sweep_removes_what_killed_brokers_left_and_nothing_live(lock_dir: str) -> None:
    ids = IdRange(3000000, 3)
    live = claim(ids, lock_dir=lock_dir)
    for value in range(ids.first, ids.last + 1):
        if value != live.id:
            Path(lock_dir, str(value)).touch(mode=0o600)  # as a killed broker leaves them: unlocked
    Path(lock_dir, "9999999").touch()  # not of this range: left alone
    assert census(ids, lock_dir=lock_dir) == (1, 2)
    assert hostids.sweep(ids, lock_dir=lock_dir) == 2
    assert sorted(os.listdir(lock_dir)) == sorted([str(live.id), "9999999"])
    assert census(ids, lock_dir=lock_dir) == (1, 0)
    live.release()
