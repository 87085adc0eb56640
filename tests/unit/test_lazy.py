"""``privsep._lazy``: a module bound now, imported on its first use, then itself in the namespace."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from privsep._lazy import lazy_module


def test_a_placeholder_imports_its_module_on_first_use_and_gives_way_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "lazy_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lazy_probe_pkg", "lazy_probe_pkg.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    namespace: dict[str, Any] = {}
    namespace["sub"] = lazy_module("lazy_probe_pkg.sub", namespace)
    assert "lazy_probe_pkg.sub" not in sys.modules  # bound, not imported
    assert namespace["sub"].VALUE == 42  # the submodule, not its package
    assert namespace["sub"] is sys.modules["lazy_probe_pkg.sub"]


def test_a_module_imported_already_is_bound_as_itself() -> None:
    assert lazy_module("sys", {}) is sys
