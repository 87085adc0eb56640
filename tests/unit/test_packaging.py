"""What a wheel would ship: every package under privsep/, found by pyproject.toml's own rule."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_distribution_holds_every_package_of_privsep() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "privsep").rglob("__init__.py")
    }
    if isinstance(config.get("packages"), list):
        shipped = set(config["packages"])
    else:  # setuptools' find: each dotted name matched against the include patterns
        include = config.get("packages", {}).get("find", {}).get("include", ["*"])
        shipped = {name for name in on_disk if any(fnmatchcase(name, pattern) for pattern in include)}
    assert on_disk - shipped == set(), "packages a wheel would lack (a non-editable install breaks)"


def test_no_data_directory_becomes_a_namespace_package() -> None:
    """privsep/policies holds data, not code. As a namespace package (setuptools' find with
    namespaces on, its default in pyproject.toml) the editable install puts an import-hook
    placeholder on sys.path, which every sandboxed Python then tries to open: a denial in
    each report of ``privsep learn``."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = config.get("packages", {}).get("find") if isinstance(config.get("packages"), dict) else None
    data_dirs = [
        d
        for d in (REPO / "privsep").rglob("*")
        if d.is_dir() and not (d / "__init__.py").exists() and d.name != "__pycache__"
    ]
    if find is not None and data_dirs:
        assert find.get("namespaces") is False, f"{data_dirs} would ship as namespace packages"


def test_privseps_own_modules_are_not_rewritten_by_pytest() -> None:
    """pytest marks an installed plugin's whole distribution for assertion rewriting; the plugin
    takes privsep back out, so a session imports its ~140 modules compiled instead of parsing
    and rewriting each one again (with PYTHONDONTWRITEBYTECODE nothing would keep the result)."""
    import importlib
    import sys

    from _pytest.assertion.rewrite import AssertionRewritingHook

    sys.modules.pop("privsep.broker.verdicts", None)
    module = importlib.import_module("privsep.broker.verdicts")
    assert not isinstance(module.__loader__, AssertionRewritingHook)
