"""config_loader: a tiny library under test, loading an application's TOML configuration.

    load(path) -> dict

A config file may ``include`` other files of its own directory (or below
it), which it overrides key by key. An include that leads outside that
directory is refused, and so is a cycle.

The library works on a host and in a privsep sandbox alike: it opens files
with ``privsep.client.open`` when it runs confined (``PRIVSEP_FD`` is set),
so it needs no more than a read grant on the config directory.
"""

from __future__ import annotations

import os
import posixpath
import tomllib
from collections.abc import Callable
from typing import IO, Any

__all__ = ["ConfigError", "load"]

MAX_INCLUDES = 16

Opener = Callable[[str, str], IO[bytes]]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file."""


def _default_opener() -> Opener:
    if "PRIVSEP_FD" in os.environ:
        from privsep import client  # noqa: PLC0415 - only when confined

        return client.open
    return open


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(path: str | os.PathLike[str], opener: Opener | None = None) -> dict[str, Any]:
    """The configuration at ``path``, its includes merged under it."""
    path = posixpath.normpath(os.path.abspath(os.fspath(path)))
    return _load(path, posixpath.dirname(path), opener or _default_opener(), [])


def _load(path: str, root: str, opener: Opener, chain: list[str]) -> dict[str, Any]:
    if path in chain:
        raise ConfigError(f"{path}: include cycle: {' -> '.join([*chain, path])}")
    if len(chain) >= MAX_INCLUDES:
        raise ConfigError(f"{path}: more than {MAX_INCLUDES} nested includes")
    with opener(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    includes = data.pop("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include must be a list of file names")
    merged: dict[str, Any] = {}
    for name in includes:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path), name))
        if not target.startswith(root + "/"):
            raise ConfigError(f"{path}: include {name!r} is outside the config directory {root}")
        merged = _merge(merged, _load(target, root, opener, [*chain, path]))
    return _merge(merged, data)
