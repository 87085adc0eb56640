"""A module imported on first use: what a run may never need is not imported until it does.

``privsep run -- /bin/true`` used to spend most of its time importing
pydantic and building models (the protocol's, the policy's) that a sandbox
which never sends a request does not use (issue 16). A module that needs
``privsep.protocol`` only once a request has arrived binds the name to
:func:`lazy_module`'s placeholder instead::

    if TYPE_CHECKING:
        from privsep import protocol
    else:
        protocol = lazy_module("privsep.protocol", globals())

The first attribute access through the placeholder imports the module and
puts it in the placeholder's place, in the namespace it was bound in: from
then on that module's code reads the plain module, at no cost per access.

Not ``importlib.util.LazyLoader``: its half-loaded modules sit in
``sys.modules``, where anything that walks it (``inspect.getmodule``, which
pydantic calls while it builds a model) loads them at an arbitrary moment,
in the middle of another import. The placeholder is in no registry.
"""

from __future__ import annotations

import sys
from types import ModuleType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["lazy_module"]


class _Placeholder:
    """Stands for a module until its first attribute access; then the module stands for itself."""

    def __init__(self, name: str, namespace: dict[str, Any]) -> None:
        self._name = name
        self._namespace = namespace

    def __getattr__(self, attr: str) -> Any:
        # __import__ and sys.modules, not importlib.import_module: importing importlib (and the
        # warnings it imports) cost every privsep run ~0.5 ms, for one call made later, or never.
        __import__(self._name)
        module = sys.modules[self._name]
        for key, value in list(self._namespace.items()):
            if value is self:
                self._namespace[key] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


def lazy_module(name: str, namespace: dict[str, Any]) -> ModuleType:
    """``name`` if it is imported already, else a placeholder that imports it on first use and
    then replaces itself in ``namespace`` (the caller's ``globals()``)."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    placeholder: ModuleType = _Placeholder(name, namespace)  # type: ignore[assignment]
    return placeholder  # stands for the module: callers bind it under TYPE_CHECKING's import
