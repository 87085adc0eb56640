"""A policy as ``privsep run`` enforces it: extends merged, variables expanded, groups expanded.

``privsep policy show NAME|FILE`` prints :func:`render_toml` (readable, with
comments: where the policy came from, which group each syscall belongs to,
the index of each rule as denial messages name it) or :func:`render_json`
(for machines). The TOML is itself a valid policy file, equivalent to the
one shown: save it, and ``privsep run --policy`` it to pin a policy against
changes to the files it extends.

Pure apart from reading the policy files of an ``extends`` chain
(:func:`chain`), like :mod:`privsep.policy.load`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privsep.policy.load import _expand, _locate, variables
from privsep.policy.model import Policy
from privsep.policy.syscalls import GROUP_DOCS, GROUPS, expand

__all__ = ["Link", "SyscallLine", "chain", "render_json", "render_toml", "syscall_lines"]

#: Composite groups: annotating a syscall with them says nothing a finer group does not.
_COMPOSITE = frozenset({"@system-service"})
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Link:
    """One file of an ``extends`` chain: its display name and its TOML, variables expanded."""

    origin: str
    data: Mapping[str, Any]


def chain(spec: str) -> list[Link]:
    """The files ``spec`` is made of, itself first, then what it extends, and so on.

    Call it on a policy :func:`privsep.policy.load.load_policy` has loaded: the
    chain is known to be valid and finite then.
    """
    links: list[Link] = []
    values = variables()
    relative_to: Path | None = Path.cwd()
    current: str | None = spec
    while current is not None and len(links) < 64:
        origin, text, relative_to = _locate(current, relative_to)
        data = _expand(origin, tomllib.loads(text), values)
        links.append(Link(origin, data))
        extends = data.get("extends")
        current = extends if isinstance(extends, str) else None
    return links


@dataclass(frozen=True)
class SyscallLine:
    """One allowed syscall and where it comes from."""

    name: str
    groups: tuple[str, ...]
    """The groups that allow it; for a composite group (@system-service), the finer ones it is made of."""
    by_name: bool
    """Listed by its own name in ``allow``."""

    def note(self) -> str:
        return ", ".join((*self.groups, *(("by name",) if self.by_name else ())))


def syscall_lines(allow: Sequence[str]) -> list[SyscallLine]:
    """``allow`` expanded into sorted syscall names, each with the groups that allow it.

    A name allowed through a composite group such as ``@system-service`` is
    noted with the finer groups it belongs to (``@file-system``), which say
    what it is for; raises PolicyError for an unknown group or a dangerous name.
    """
    written_groups = [g for g in allow if g.startswith("@")]
    singles = {n for n in allow if not n.startswith("@")}
    lines = []
    for name in sorted(expand(allow)):
        notes: set[str] = set()
        for group in written_groups:
            if name in GROUPS[group]:
                finer = [g for g in GROUPS if g not in _COMPOSITE and name in GROUPS[g]]
                notes.update(finer if group in _COMPOSITE and finer else [group])
        lines.append(SyscallLine(name, tuple(sorted(notes)), name in singles))
    return lines


# --- TOML ----------------------------------------------------------------------------------------


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are valid in a TOML basic string
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _array(key: str, items: Sequence[Any], notes: Sequence[str] | None = None) -> list[str]:
    """``key = [...]`` on one line when short and without notes, else one item per line."""
    inline = f"{key} = {_value(items)}"
    if not items or (notes is None and len(inline) <= 80):
        return [inline]  # an empty array is "[]", notes or not (max() of no widths raised)
    out = [f"{key} = ["]
    written = [_value(item) + "," for item in items]
    width = max(map(len, written))
    for i, item in enumerate(written):
        note = f"  # {notes[i]}" if notes is not None and notes[i] else ""
        out.append(f"    {item.ljust(width) if note else item}{note}")
    out.append("]")
    return out


def _table(data: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in data.items():
        if value is None:
            # TOML has no null: an unset optional (env.cwd: "where privsep ran") is left out.
            out.append(f"# {_key(key)}: not set (its default)")
        elif isinstance(value, (list, tuple)):
            out += _array(_key(key), value)
        else:
            out.append(f"{_key(key)} = {_value(value)}")
    return out


def _dump(policy: Policy) -> dict[str, Any]:
    data = policy.model_dump(mode="json", by_alias=True)
    data["secrets"] = {name: str(source) for name, source in policy.secrets.items()}
    return data


def render_toml(policy: Policy, links: Sequence[Link] = ()) -> str:
    """The resolved policy as a commented TOML policy file (ends with a newline)."""
    data = _dump(policy)
    out = [f"# privsep policy show {policy.name}"]
    if links:
        out.append("# resolved from: " + " -> ".join(link.origin for link in links))
    out += [
        "# Fully resolved: extends merged, variables expanded, syscall groups expanded,",
        "# every default written out. This is what `privsep run` enforces, before the",
        "# --allow-* and --secret flags of a run are added. It is a policy file itself.",
    ]
    if policy.description:
        out += ["", f"description = {_value(policy.description)}"]
    for table in ("view", "limits", "env", "transparent", "network"):
        out += ["", f"[{table}]", *_table(data[table])]
    lines = syscall_lines(policy.syscalls.allow)
    out += ["", "[syscalls]", f"default = {_value(policy.syscalls.default)}"]
    out.append("# as written: " + (", ".join(policy.syscalls.allow) or "(nothing)"))
    for entry in policy.syscalls.allow:
        if entry.startswith("@"):
            out.append(f"#   {entry} ({len(GROUPS[entry])} syscalls): {GROUP_DOCS[entry]}")
    out.append(f"# {len(lines)} syscalls, each with the groups that allow it:")
    out += _array("allow", [line.name for line in lines], [line.note() for line in lines])
    for kind in ("files", "connect", "bind"):
        for index, rule in enumerate(data[kind]):
            out += ["", f"# {kind}[{index}]", f"[[{kind}]]", *_table(rule)]
    if data["secrets"]:
        out += ["", "[secrets]", *_table(data["secrets"])]
    return "\n".join(out) + "\n"


def render_json(policy: Policy, links: Sequence[Link] = ()) -> str:
    """The resolved policy as JSON: the TOML's content, with ``syscalls`` spelled out.

    ``syscalls.allow`` is the sorted list of names; ``syscalls.written`` what
    the policy lists; ``syscalls.groups`` maps each name to the groups that
    allow it ("by name" when listed by itself).
    """
    data = _dump(policy)
    lines = syscall_lines(policy.syscalls.allow)
    data["resolved_from"] = [link.origin for link in links]
    data["syscalls"] = {
        "default": policy.syscalls.default,
        "written": list(policy.syscalls.allow),
        "allow": [line.name for line in lines],
        "groups": {line.name: [*line.groups, *(["by name"] if line.by_name else [])] for line in lines},
    }
    return json.dumps(data, indent=2) + "\n"
