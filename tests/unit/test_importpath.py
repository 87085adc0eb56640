"""A grant that could write where the broker imports Python from is refused at planning.

The broker imports some modules late (a report, a hint): a sandbox able to write a directory on
the broker's ``sys.path`` could leave a module there that then runs as the broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from privsep.errors import PolicyError
from privsep.plan.importpath import check_grants


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory on a (pretend) sys.path, holding a package, a module and a data directory."""
    (tmp_path / "site" / "pkg").mkdir(parents=True)
    (tmp_path / "site" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "site" / "mod.py").write_text("")
    (tmp_path / "site" / "data").mkdir()
    (tmp_path / "site" / "json").mkdir()  # a stdlib name: an __init__.py here would win
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def _check(site: Path, path: Path, access: tuple[str, ...] = ("read", "write")) -> None:
    check_grants([(str(path), access)], path=[str(site / "site"), "/usr/lib/python3.11"])


@pytest.mark.parametrize("where", ["site", ".", "site/pkg", "site/pkg/sub", "site/json", "site/__pycache__"])
def test_a_write_grant_on_or_over_an_import_directory_or_inside_a_module_is_refused(
    site: Path, where: str
) -> None:
    target = site / where
    target.mkdir(parents=True, exist_ok=True)
    refused = r"(imports Python modules from|could import as a Python module)"
    with pytest.raises(PolicyError, match=refused) as caught:
        _check(site, target)
    assert "grant a directory outside it" in str(caught.value)


@pytest.mark.parametrize("where", ["site/data", "elsewhere"])
def test_a_write_grant_elsewhere_or_of_a_plain_data_directory_is_kept(site: Path, where: str) -> None:
    _check(site, site / where)


def test_read_grants_are_not_concerned(site: Path) -> None:
    _check(site, site / "site", ("read", "list"))
