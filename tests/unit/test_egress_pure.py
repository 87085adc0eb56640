"""privsep.egress stays pure: no I/O module, nothing from the broker, confinement or channel."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import privsep.egress

PACKAGE = pathlib.Path(privsep.egress.__file__).parent
#: Standard modules that do I/O, keep time or start threads: the broker brings those.
IMPURE = {
    "socket",
    "select",
    "selectors",
    "asyncio",
    "threading",
    "os",
    "subprocess",
    "time",
    "ssl",
    "ctypes",
}


def _imports(path: pathlib.Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_a_module_imports_only_pure_things(path: pathlib.Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "privsep":
            assert name.startswith(("privsep.egress", "privsep.policy")), name
        else:
            assert top in sys.stdlib_module_names and top not in IMPURE, name
