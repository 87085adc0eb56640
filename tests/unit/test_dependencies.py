"""The directions of dependency DESIGN.md draws, pinned: read from the source with ``ast``, never imported.

- ``broker`` reaches ``confine`` only through ``privsep.confine.spawn.spawn``;
- ``confine`` never imports ``broker``;
- ``protocol`` and ``policy`` are pure: no broker, confine or channel;
- ``plan`` (what the broker computes before fork) imports neither ``broker``
  nor ``confine``: both build on it.

Every import counts, wherever it is written: inside a function, under
``TYPE_CHECKING``, relative or absolute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "privsep"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every name ``source`` (the text of ``module``) imports, in full: ``from a.b import c`` is ``a.b.c``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (f"{base}.{alias.name}" for alias in node.names)


#: The one name of ``confine`` the broker may import.
_SPAWN = "privsep.confine.spawn.spawn"


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that go against a direction above."""
    bad: list[str] = []
    for name in imported(source, module, is_package=is_package):
        if _within(module, "privsep.broker") and _within(name, "privsep.confine") and name != _SPAWN:
            bad.append(f"{module} imports {name}: the broker reaches confine only through spawn")
        if _within(module, "privsep.confine") and _within(name, "privsep.broker"):
            bad.append(f"{module} imports {name}: confine never imports the broker")
        if _within(module, "privsep.plan"):
            for other in ("privsep.broker", "privsep.confine"):
                if _within(name, other):
                    bad.append(f"{module} imports {name}: the plan is computed below {other}")
        if module == "privsep.protocol" or _within(module, "privsep.policy"):
            for other in ("privsep.broker", "privsep.confine", "privsep.channel"):
                if _within(name, other):
                    bad.append(f"{module} imports {name}: protocol and policy are pure")
    return bad


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_keeps_its_directions() -> None:
    bad: list[str] = []
    for path in _sources():
        module = _module_name(path)
        bad += violations(path.read_text(), module, is_package=path.name == "__init__.py")
    assert bad == []


@pytest.mark.parametrize("layer", ["broker", "confine", "plan", "policy"])
def test_every_layer_is_read(layer: str) -> None:
    """A layer moved or renamed would leave its rules checking nothing."""
    assert any(_module_name(p).startswith(f"privsep.{layer}.") for p in _sources())
    assert (PACKAGE / "protocol.py").is_file()


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("privsep.broker.loop", "from privsep.confine.spawn import spawn, monitor_main\n"),
        ("privsep.broker.loop", "from privsep.confine import spawn\n"),
        ("privsep.broker.loop", "def f():\n    import privsep.confine.seccomp\n"),
        ("privsep.broker.loop", "from ..confine.view import build_view\n"),
        ("privsep.broker.loop", "from privsep import confine\n"),
        (
            "privsep.confine.spawn",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from privsep.broker import loop\n",
        ),
        ("privsep.confine.spawn", "from ..broker.audit import AuditLog\n"),
        ("privsep.plan.spawnplan", "from privsep.confine import identity\n"),
        ("privsep.plan.spawnplan", "from .. import broker\n"),
        ("privsep.protocol", "from privsep.channel import Frame\n"),
        ("privsep.policy.model", "from . import syscalls\nfrom privsep.broker.files import FileService\n"),
    ],
)
def test_a_wrong_direction_is_found(module: str, source: str) -> None:
    assert violations(source, module) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "privsep.broker.loop",
            "from privsep.confine.spawn import spawn\nfrom privsep.plan import spawnplan\n",
        ),
        ("privsep.confine.spawn", "from privsep.plan.spawnplan import SpawnPlan\nfrom . import view\n"),
        ("privsep.policy.model", "from . import syscalls\nfrom privsep.errors import PolicyError\n"),
    ],
)
def test_the_allowed_directions_pass(module: str, source: str) -> None:
    assert violations(source, module) == []
