"""A read-only open the broker has decided before (FileService keeps the decision) is still
resolved anew, beneath the grant, every time: what is at the path now is what counts."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from privsep.broker.answers import Refusal
from privsep.broker.files import FileService
from privsep.errorcodes import ErrorCode
from tests.unit.test_decide import grant as grant_rule
from tests.unit.test_decide import policy


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FileService, Path]]:
    grant = tmp_path / "g"
    grant.mkdir()
    (grant / "f").write_text("one")
    (tmp_path / "outside").write_text("secret")
    service = FileService(policy(files=[grant_rule(str(grant), "read")]))
    yield service, grant
    service.close()


def _read(service: FileService, path: Path) -> str:
    fd, _ = service.open_read(str(path))
    with open(fd, encoding="utf-8") as f:
        return f.read()


def test_a_remembered_read_follows_what_is_there_now(served: tuple[FileService, Path]) -> None:
    service, grant = served
    target = grant / "f"
    assert _read(service, target) == "one"
    target.unlink()
    with pytest.raises(Refusal) as gone:
        service.open_read(str(target))
    assert gone.value.code is ErrorCode.NOT_FOUND
    target.symlink_to(grant.parent / "outside")  # out of the grant: refused, not followed
    with pytest.raises(Refusal) as link:
        service.open_read(str(target))
    assert link.value.code is ErrorCode.DENIED
    target.unlink()
    os.mkfifo(target)  # would block an open without O_NONBLOCK; never handed over
    with pytest.raises(Refusal, match="not a regular file"):
        service.open_read(str(target))
    target.unlink()
    target.write_text("two")
    assert _read(service, target) == "two"


def test_a_refused_read_stays_refused(served: tuple[FileService, Path]) -> None:
    service, grant = served
    outside = grant.parent / "outside"
    for _ in range(2):
        with pytest.raises(Refusal) as refused:
            service.open_read(str(outside))
        assert refused.value.code is ErrorCode.DENIED
    assert str(outside) not in service._reads


def test_the_fd_handed_over_is_blocking_and_read_only(served: tuple[FileService, Path]) -> None:
    service, grant = served
    fd, rule = service.open_read(str(grant / "f"))
    try:
        assert os.get_blocking(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert rule == "files[0]"
    finally:
        os.close(fd)


def test_closing_the_service_forgets_the_remembered_reads(served: tuple[FileService, Path]) -> None:
    """A remembered read holds its grant's pinned fd number; after close() that number may be
    another directory's, so nothing remembered may survive it (fresh-eyes audit, hardening)."""
    service, grant = served
    assert _read(service, grant / "f") == "one"
    decoy = grant.parent / "decoy"
    decoy.mkdir()
    (decoy / "f").write_text("decoy")
    (pin_fd,) = {target[1] for target in service._reads.values()}  # the grant's pinned dirfd
    service.close()
    taken = os.open(decoy, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    os.dup2(taken, pin_fd)  # whatever the broker opens next may get that number
    os.close(taken)
    taken = pin_fd
    try:
        try:
            got = _read(service, grant / "f")
        except (Refusal, KeyError, OSError):
            return
        assert got != "decoy", "a remembered read opened beneath a descriptor it no longer owns"
    finally:
        os.close(taken)
