"""What a wheel would ship: every package under privsep/, found by pyproject.toml's own rule."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]


def test_the_distribution_holds_every_package_of_privsep() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    if "packages" in config and isinstance(config["packages"], list):
        shipped = set(config["packages"])
    else:
        include = config.get("packages", {}).get("find", {}).get("include", ["*"])
        shipped = set(find_packages(str(REPO), include=include))
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "privsep").rglob("__init__.py")
    }
    assert on_disk - shipped == set(), "packages a wheel would lack (a non-editable install breaks)"
