"""plan/ownpaths.py: no write grant reaches a file privsep opens by name (pure; paths need not exist)."""

from __future__ import annotations

import pytest

from privsep.errors import PolicyError
from privsep.plan import ownpaths
from privsep.plan.ownpaths import check_writes

LOG = ("/srv/logs/audit.log", "the audit log", "move it")


@pytest.mark.parametrize("granted", ["/srv/logs/audit.log", "/srv/logs", "/srv", "/"])
def test_a_write_grant_on_or_over_the_file_is_refused(granted: str) -> None:
    with pytest.raises(PolicyError, match=r"the audit log \(/srv/logs/audit.log\).*or move it"):
        check_writes([(granted, ["write"])], [LOG])


@pytest.mark.parametrize("granted", ["/srv/other", "/srv/logs-old", "/srv/logs/audit.log.d"])
def test_a_write_grant_beside_it_is_not(granted: str) -> None:
    check_writes([(granted, ["write", "create"])], [LOG])


def test_a_read_grant_over_it_is_not() -> None:
    check_writes([("/srv", ["read", "list"])], [LOG])


def test_a_grant_inside_a_guarded_directory_is_refused() -> None:
    cache = ("/var/cache/privsep", "privsep's plan cache", "move it")
    with pytest.raises(PolicyError, match="is inside privsep's plan cache"):
        check_writes([("/var/cache/privsep/0123.plan", ["truncate"])], [cache])


def test_a_guarded_path_holds_for_the_rest_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ownpaths, "_guarded", {})
    ownpaths.guard("/srv/logs/audit.log", "the audit log", "move it")
    with pytest.raises(PolicyError, match="holds the audit log"):
        check_writes([("/srv", ["append"])])
