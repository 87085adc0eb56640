"""The JSON Schema of a policy file, derived from the models so it cannot drift.

What a user writes in TOML: ``extends``, ``description``, the ``[view]``,
``[syscalls]``, ``[limits]``, ``[env]``, ``[transparent]`` and ``[network]``
tables, the ``[[files]]``, ``[[connect]]`` and ``[[bind]]`` arrays of tables and
the ``[secrets]`` table of "env:VAR" / "file:/path" strings. The schema checks shape (keys,
types, ranges); the loader checks the rest (normalised paths, CIDRs, host
names, deny rules, secrets kept out of the child's environment) and explains
it. Since a file may extend another, nothing in it is required.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from privsep.policy.model import _ENV_NAME, MAX_SECRETS, Policy
from privsep.protocol import MAX_PATH, SECRET_NAME

__all__ = ["policy_json_schema"]

_ORDER = (
    "extends",
    "description",
    "view",
    "syscalls",
    "limits",
    "env",
    "files",
    "connect",
    "bind",
    "secrets",
    "transparent",
    "network",
)


@functools.cache
def _schema() -> dict[str, Any]:
    schema = Policy.model_json_schema(mode="validation")
    props: dict[str, Any] = schema.pop("properties")
    props.pop("name")
    props["extends"] = {
        "title": "Extends",
        "description": (
            "A shipped policy name (minimal, python) or the path of a TOML file, relative to this "
            "file; merged under this one: tables key by key, arrays concatenated, parent first."
        ),
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_PATH,
    }
    env_var = _ENV_NAME.pattern.strip("^$")
    props["secrets"] = {
        "title": "Secrets",
        "description": (
            'Name -> "env:VARIABLE" or "file:/absolute/path", read by the broker and handed to the '
            "child as a sealed memfd on request; never put into its environment."
        ),
        "type": "object",
        "maxProperties": MAX_SECRETS,
        "propertyNames": {"pattern": SECRET_NAME.pattern},
        "additionalProperties": {"type": "string", "pattern": f"^(env:{env_var}|file:/.*)$"},
    }
    schema["$defs"].pop("SecretSource", None)
    schema.pop("required", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "privsep policy file",
        "description": (
            "A privsep policy as written in TOML, before 'extends' is resolved. "
            "See `privsep policy schema` and docs."
        ),
        "type": "object",
        "additionalProperties": False,
        "properties": {key: props[key] for key in _ORDER},
        "$defs": schema["$defs"],
    }


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy file; a fresh copy each call."""
    return copy.deepcopy(_schema())
