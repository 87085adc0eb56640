"""Loading policies: TOML files, ``extends`` chains, shipped names, variables.

A policy is named (``minimal``, ``python``: the TOML files shipped in the
package's ``policies``) or a path to a file. ``extends`` merges a parent
under the child: tables merge key by key (``[secrets]`` too), lists and
arrays of tables (``[[files]]``, ``[[connect]]``, ``[[bind]]``) are
concatenated, parent first (duplicates dropped, order kept), scalars are the
child's. ``${name}`` variables are expanded in every string of the files;
command-line grants (``extra``, see :mod:`privsep.policy.grants`) are merged
last and taken literally. Errors name the file, the field and the fix,
because a policy nobody can debug is a policy nobody uses.
"""

from __future__ import annotations

import importlib.resources
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from privsep import _hostfacts as host
from privsep.errors import PolicyError
from privsep.policy.model import Policy, PolicyFile

_MAX_EXTENDS_DEPTH = 16
_MAX_FILE_SIZE = 1 << 20
_VARIABLE = re.compile(r"\$\{([a-z_.]+)\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def variables() -> dict[str, str]:
    """Values a policy may refer to as ``${name}`` in paths.

    They let one shipped file describe "this interpreter and its venv" on any
    machine, without hard-coding where Python happens to live.
    """
    return {
        "sys.prefix": sys.prefix,
        "sys.base_prefix": sys.base_prefix,
        "sys.exec_prefix": sys.exec_prefix,
        # The package itself (this file is privsep/policy/load.py): a Python child imports it.
        "privsep.package": str(Path(__file__).resolve().parent.parent),
    }


def shipped_names() -> list[str]:
    """The names of the policies shipped with privsep."""
    root = importlib.resources.files("privsep").joinpath("policies")
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_named(name: str) -> tuple[str, str]:
    resource = importlib.resources.files("privsep").joinpath("policies").joinpath(f"{name}.toml")
    if not resource.is_file():
        raise PolicyError(
            f"no shipped policy named '{name}'; shipped policies: {', '.join(shipped_names())}; "
            "or give the path of a TOML file"
        )
    if isinstance(resource, Path):  # read as any policy file is, so that the plan cache sees it read
        return f"<shipped policy '{name}'>", _read_file(resource)[1]
    host.incomplete()  # in a zip: not a file the plan cache could read again
    return f"<shipped policy '{name}'>", resource.read_text(encoding="utf-8")


def _read_file(path: Path) -> tuple[str, str]:
    try:
        raw = host.read_bytes(str(path), _MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    except ValueError:  # a NUL in the path
        raise PolicyError(f"policy path {str(path)!r} contains a NUL byte") from None
    if len(raw) > _MAX_FILE_SIZE:
        raise PolicyError(f"policy file {path} is larger than {_MAX_FILE_SIZE} bytes")
    try:
        return str(path), raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text") from None


def _locate(spec: str, relative_to: Path | None) -> tuple[str, str, Path | None]:
    """Return (display name, text, directory for relative ``extends``)."""
    if _NAME.match(spec) and not spec.endswith(".toml"):
        origin, text = _read_named(spec)
        return origin, text, None
    path = Path(spec)
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    origin, text = _read_file(path)
    return origin, text, path.parent


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(origin: str, exc: ValidationError) -> PolicyError:
    lines = []
    for err in exc.errors(include_url=False):
        where = _format_loc(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(
                f"{where}: unknown key; remove it or check its spelling (see `privsep policy schema`)"
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}")
    return PolicyError(f"invalid policy {origin}:\n  " + "\n  ".join(lines))


def _merge(parent: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = dict(parent)
    for key, value in child.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + [v for v in value if v not in old]
        else:
            merged[key] = value
    return merged


def _expand(origin: str, value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise PolicyError(
                    f"invalid policy {origin}: unknown variable ${{{name}}}; known: "
                    + ", ".join(f"${{{k}}}" for k in sorted(values))
                )
            return values[name]

        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [_expand(origin, v, values) for v in value]
    if isinstance(value, dict):
        return {k: _expand(origin, v, values) for k, v in value.items()}
    return value


def _tuples(value: Any) -> Any:
    """TOML arrays become tuples: the model is immutable, and strict about types."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _load_raw(spec: str, relative_to: Path | None, seen: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    origin, text, directory = _locate(spec, relative_to)
    if origin in seen:
        raise PolicyError(f"policy {origin} extends itself through: {' -> '.join((*seen, origin))}")
    if len(seen) >= _MAX_EXTENDS_DEPTH:
        raise PolicyError(f"policy {origin}: 'extends' chain deeper than {_MAX_EXTENDS_DEPTH}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {origin} is not valid TOML: {exc}") from None
    except RecursionError:
        raise PolicyError(f"policy {origin} nests tables or arrays too deeply") from None
    try:
        file = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise _explain(origin, exc) from None
    body = {k: v for k, v in data.items() if k != "extends"}
    if file.extends is None:
        return origin, body
    _, parent = _load_raw(file.extends, directory, (*seen, origin))
    return origin, _merge(parent, body)


def load_policy(spec: str, *, extra: Mapping[str, Any] | None = None) -> Policy:
    """Load a shipped policy by name, or a TOML file by path, fully resolved.

    ``extra`` is merged over the result like one more ``extends`` level; it
    carries the grants given on the command line for a single run
    (:func:`privsep.policy.grants.grants_to_extra`), taken literally: no
    ``${name}`` expansion in them.
    """
    return validate_policy(resolve_policy(spec, extra=extra))


@dataclass(frozen=True)
class Resolved:
    """A policy read, its ``extends`` merged, its variables expanded and the command-line grants
    merged: what :func:`validate_policy` turns into the model. Plain data (TOML's types), so
    that ``privsep run``'s plan cache can keep it and validate it only when a request needs it."""

    spec: str
    origin: str
    """The file or shipped name the errors name."""
    extra: bool
    """Command-line grants were merged in (the errors say so)."""
    data: dict[str, Any]


def resolve_policy(spec: str, *, extra: Mapping[str, Any] | None = None) -> Resolved:
    """The first half of :func:`load_policy`: every file read and checked, nothing validated as a whole."""
    origin, raw = _load_raw(spec, Path.cwd(), ())
    raw = _expand(origin, raw, variables())
    if extra:
        raw = _merge(raw, extra)
    return Resolved(spec, origin, bool(extra), raw)


def validate_policy(resolved: Resolved) -> Policy:
    """The second half of :func:`load_policy`: the model, or a PolicyError naming each field."""
    try:
        return Policy.model_validate({"name": resolved.spec, **_tuples(resolved.data)})
    except ValidationError as exc:
        origin = f"{resolved.origin} with the command-line grants" if resolved.extra else resolved.origin
        raise _explain(origin, exc) from None
