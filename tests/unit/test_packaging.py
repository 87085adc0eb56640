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
