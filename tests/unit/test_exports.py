"""The public API, pinned (after trio's ``_tests/test_exports.py``).

Each public module's ``__all__`` is exactly the list below: a name added or
dropped is a decision this test makes someone write down. And no public
signature leaks an internal type: every class a public function, method or
dataclass field names must itself be public (exported by a public module) or
come from outside privsep. Otherwise a user could hold an object they cannot
name, import or rely on, and a refactor of the broker would break them.

What is walked: every exported function (and each of its overloads); every
method, property and classmethod an exported class defines itself; the fields
of exported dataclasses; the bases of exported classes. ``Policy`` is exported
(``Sandbox`` takes one) but defined in ``privsep.policy.model``: its fields are
the policy file's schema, published as JSON Schema by ``privsep policy
schema``, and neither they nor its pydantic base class are walked here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from privsep._record import Record

PUBLIC: dict[str, list[str]] = {
    "privsep": [
        "BrokerError",
        "ChannelError",
        "ChildError",
        "ConfinementError",
        "Denial",
        "DeniedError",
        "LocalProtocolError",
        "Policy",
        "PolicyError",
        "PrivsepError",
        "ProtocolError",
        "RemoteProtocolError",
        "RunResult",
        "Sandbox",
        "__version__",
        "load_policy",
    ],
    "privsep.client": [
        "ENV_VAR",
        "Client",
        "RelayedUdpSocket",
        "bind",
        "connect",
        "connect_unix",
        "default",
        "hello",
        "listdir",
        "mkdir",
        "open",
        "ping",
        "rename",
        "secret",
        "secret_fd",
        "stat",
        "unlink",
    ],
    "privsep.testing": [
        "CONFINED_GID",
        "CONFINED_UID",
        "assert_confined",
        "assert_denied",
        "assert_not_visible",
    ],
}

#: Exemptions from the no-internal-type rule, each with its reason. Empty: every leak was fixed.
EXEMPT: dict[str, str] = {}


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_exactly_the_public_api(name: str) -> None:
    assert sorted(_module(name).__all__) == sorted(PUBLIC[name])


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_exported_name_exists(name: str) -> None:
    module = _module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_a_confined_child_imports_the_package_without_the_broker() -> None:
    """The lazy names stay lazy: ``import privsep`` must not load the broker's code."""
    code = (
        "import sys, privsep, privsep.client\n"
        "heavy = ('privsep.broker', 'privsep.sandbox', 'privsep.policy')\n"
        "loaded = [m for m in sys.modules if m.startswith(heavy)]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- no internal type leaks


def _public_objects() -> dict[int, str]:
    """id of every exported class -> where it is exported, for the "is it public" question."""
    found: dict[int, str] = {}
    for name, names in PUBLIC.items():
        module = _module(name)
        for attr in names:
            obj = getattr(module, attr)
            if isinstance(obj, type):
                found[id(obj)] = f"{name}.{attr}"
    return found


def _classes_in(hint: object) -> Iterator[type]:
    """Every class a (resolved) annotation names, through unions, generics and aliases."""
    if hint is None or hint is type(None) or isinstance(hint, (str, int, bool, bytes)):
        return  # Literal values, None
    if isinstance(hint, typing.TypeVar):
        for bound in (hint.__bound__, *hint.__constraints__):
            yield from _classes_in(bound)
        return
    origin = typing.get_origin(hint)
    if origin is not None:
        if origin is not typing.Literal:
            if isinstance(origin, type):
                yield origin
            for arg in typing.get_args(hint):
                yield from _classes_in(arg)
        return
    if isinstance(hint, list):  # Callable's argument list
        for arg in hint:
            yield from _classes_in(arg)
        return
    if hint is Ellipsis or hint is Any:
        return
    if isinstance(hint, type):
        yield hint


def _hints(fn: Callable[..., Any], where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except NameError as exc:  # an annotation names something its module does not import
        raise AssertionError(f"{where}: unresolvable annotation ({exc})") from None


def _functions(owner: str, obj: Any) -> Iterator[tuple[str, Callable[..., Any]]]:
    if inspect.isfunction(obj):
        yield owner, obj
        for i, overload in enumerate(typing.get_overloads(obj)):
            yield f"{owner} (overload {i})", overload


def _surfaces() -> Iterator[tuple[str, object]]:
    """(where, annotation or class) for everything the public API shows a user."""
    for name, names in PUBLIC.items():
        module = _module(name)
        for attr in names:
            obj = getattr(module, attr)
            where = f"{name}.{attr}"
            for label, fn in _functions(where, obj):
                for param, hint in _hints(fn, label).items():
                    yield f"{label}: {param}", hint
            if not isinstance(obj, type) or obj.__module__.startswith("privsep.policy."):
                continue  # Policy: see the module docstring
            for base in obj.__bases__:
                yield f"{where}: base", base
            if dataclasses.is_dataclass(obj):
                hints = typing.get_type_hints(obj)
                for field in dataclasses.fields(obj):
                    yield f"{where}.{field.name}", hints[field.name]
            if issubclass(obj, Record):
                hints = typing.get_type_hints(obj)
                for field_name in obj.__slots__:
                    yield f"{where}.{field_name}", hints[field_name]
            for member, value in vars(obj).items():
                if member.startswith("_") and not (member.startswith("__") and member.endswith("__")):
                    continue
                inner: Any = value
                if isinstance(value, (classmethod, staticmethod)):
                    inner = value.__func__
                elif isinstance(value, property):
                    inner = value.fget
                for label, method in _functions(f"{where}.{member}", inner):
                    for param, hint in _hints(method, label).items():
                        yield f"{label}: {param}", hint


def _is_internal(cls: type) -> bool:
    module = cls.__module__
    return module == "privsep" or module.startswith("privsep.")


def test_no_public_signature_names_an_internal_type() -> None:
    public = _public_objects()
    leaks = []
    for where, hint in _surfaces():
        for cls in _classes_in(hint):
            if _is_internal(cls) and id(cls) not in public:
                label = f"{where} -> {cls.__module__}.{cls.__qualname__}"
                if label not in EXEMPT:
                    leaks.append(label)
    assert leaks == [], "\n".join(leaks)


def test_the_walk_sees_what_it_checks() -> None:
    """The checker itself: it finds the surfaces it claims to, and flags a type it should."""
    seen = dict(_surfaces())
    assert "privsep.Sandbox.run: return" in seen
    assert "privsep.RunResult.denials" in seen
    assert "privsep.client.Client.bind (overload 1): return" in seen
    assert "privsep.testing.assert_denied: return" in seen
    from privsep.broker.report import Denial as Internal

    assert _is_internal(Internal) and id(Internal) not in _public_objects()
    assert Internal in set(_classes_in(tuple[Internal, ...] | None))
