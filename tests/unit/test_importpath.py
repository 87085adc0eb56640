"""A grant that could write where the broker imports Python from is refused at planning.

The broker imports some modules late (a report, a hint): a sandbox able to write a directory on
the broker's ``sys.path`` could leave a module there that then runs as the broker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from privsep.errors import PolicyError
from privsep.plan.importpath import check_grants, protect


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


@pytest.mark.parametrize("name", ["zz.pth", "pkg-1.0.dist-info", "old.egg-info"])
def test_what_site_runs_or_reads_in_an_import_directory_is_refused(site: Path, name: str) -> None:
    """A .pth runs at every interpreter start (the forkserver's, with site); a distribution's
    metadata names pytest's plugins."""
    target = site / "site" / name
    target.mkdir()
    with pytest.raises(PolicyError, match="could import as a Python module"):
        _check(site, target)


def test_the_interpreter_and_its_environment_are_refused_whole(site: Path) -> None:
    """The helpers start from sys.executable, and a venv's pyvenv.cfg picks the standard library."""
    assert sys.prefix != sys.base_prefix, "the suite runs from the project's .venv"
    for target in (Path(sys.prefix), Path(sys.prefix) / "bin", Path(sys.executable).parent):
        with pytest.raises(PolicyError, match="holds the Python this process runs"):
            _check(site, target)


def test_protected_directories_are_refused_on_over_and_inside(site: Path) -> None:
    """What the pytest plugin protects: directories imported by path (tests, conftest.py)."""
    tests = site / "elsewhere" / "tests"
    (tests / "sub").mkdir(parents=True)
    _check(site, tests)  # not yet protected
    protect([str(tests)])
    for target in (tests, tests / "sub", site / "elsewhere"):
        with pytest.raises(PolicyError, match="holds the Python this process runs"):
            _check(site, target)
    _check(site, site / "site" / "data")  # the rest is as before


def test_a_grant_over_a_symlink_on_the_way_to_an_import_directory_is_refused(tmp_path: Path) -> None:
    """The 9th audit: ``proj/.venv -> /elsewhere/.venv``; a grant on ``proj`` let the sandbox
    replace the link, and with it what the next helper started from. Named paths count too."""
    real = tmp_path / "elsewhere" / "site"
    real.mkdir(parents=True)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "lib").symlink_to(real.parent)
    with pytest.raises(PolicyError, match="imports Python modules from"):
        check_grants([(str(proj), ("write", "create"))], path=[str(proj / "lib" / "site")])
    check_grants([(str(tmp_path / "other"), ("write",))], path=[str(proj / "lib" / "site")])
