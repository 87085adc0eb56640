"""Command-line grants (Deno style), turned into one more layer of policy.

``privsep run --allow-read PATH --allow-connect HOST:PORT ...`` become the
``extra`` mapping :func:`privsep.policy.load.load_policy` merges over the
policy for that run: each flag adds a ``[[files]]``, ``[[connect]]`` or
``[[bind]]`` rule after the policy's own, or a ``[secrets]`` entry. A grant
never overrides a deny rule of the policy. Every value is checked here, so a
mistake is reported against the flag that carries it.

Pure apart from reading the current directory: relative paths are made
absolute against it (``os.path.abspath``), lexically; nothing is resolved,
opened or looked up.
"""

from __future__ import annotations

import ipaddress
import os.path
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from privsep.errors import PolicyError
from privsep.policy.model import (
    MAX_RULES,
    MAX_SECRETS,
    Access,
    BindRule,
    ConnectRule,
    FileRule,
    SecretSource,
    check_secret_name,
)

__all__ = ["READ_ACCESS", "WRITE_ACCESS", "Listen", "grants_to_extra", "parse_listen"]

#: What ``--allow-read PATH`` grants on PATH and beneath it.
READ_ACCESS = (Access.READ, Access.LIST)
#: What ``--allow-write PATH`` grants on PATH and beneath it (not ``connect``).
WRITE_ACCESS = (Access.READ, Access.WRITE, Access.CREATE, Access.APPEND, Access.TRUNCATE, Access.LIST)


def _reasons(exc: ValidationError) -> str:
    return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False))


def _check(flag: str, value: str, model: type[BaseModel], data: dict[str, Any]) -> None:
    try:
        model.model_validate({k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except ValidationError as exc:
        raise PolicyError(f"{flag}: {value!r}: {_reasons(exc)}") from None


def _absolute(flag: str, value: str) -> str:
    if not value:
        raise PolicyError(f"{flag}: the path is empty; write a path, e.g. {flag}=/srv/data")
    if "\x00" in value:
        raise PolicyError(f"{flag}: the path contains a NUL byte")
    path = os.path.abspath(value)
    # POSIX keeps a leading "//" as is; privsep's paths have exactly one.
    return "/" + path.lstrip("/")


def _files(flag: str, paths: Sequence[str], access: tuple[Access, ...]) -> list[dict[str, Any]]:
    rules = []
    for value in paths:
        rule = {"path": _absolute(flag, value), "access": [a.value for a in access]}
        _check(flag, value, FileRule, rule)
        rules.append(rule)
    return rules


def _host_port(flag: str, value: str) -> tuple[str, str, str]:
    """Split "HOST:PORT", "[V6]:PORT", optionally followed by "/tcp" or "/udp"."""
    example = "127.0.0.1:8080 or [::1]:8080 (add /udp for udp)"
    text, protocol = value, "tcp"
    for suffix in ("/tcp", "/udp"):
        if text.endswith(suffix):
            text, protocol = text[: -len(suffix)], suffix[1:]
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or ":" not in host:
            raise PolicyError(f"{flag}: {value!r} is not [IPV6]:PORT; write {example}")
        port = rest[1:]
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise PolicyError(f"{flag}: {value!r} is not HOST:PORT; write {example}")
        if ":" in host:
            raise PolicyError(f"{flag}: {value!r}: an IPv6 address needs brackets; write [{host}]:{port}")
    if not port:
        raise PolicyError(f"{flag}: {value!r} has no port; write {example}")
    return host, port, protocol


def _connect(values: Sequence[str]) -> list[dict[str, Any]]:
    flag = "--allow-connect"
    rules = []
    for value in values:
        host, port, protocol = _host_port(flag, value)
        if not port.isascii() or not port.isdigit():
            if port.count("-") != 1:
                raise PolicyError(
                    f"{flag}: {value!r}: the port '{port}' is not a number 1..65535 or a range like 8000-8100"
                )
            spec: int | str = port
        else:
            spec = int(port)
        rule = {"host": host, "ports": [spec], "protocol": protocol}
        _check(flag, value, ConnectRule, rule)
        rules.append(rule)
    return rules


def _bind(values: Sequence[str]) -> list[dict[str, Any]]:
    flag = "--allow-bind"
    rules = []
    for value in values:
        host, port, protocol = _host_port(flag, value)
        if not port.isascii() or not port.isdigit() or len(port) > 5:
            raise PolicyError(f"{flag}: {value!r}: the port '{port}' is not a number 0..65535")
        rule = {"host": host, "port": int(port), "protocol": protocol}
        _check(flag, value, BindRule, rule)
        rules.append(rule)
    return rules


def _secrets(values: Sequence[str]) -> dict[str, str]:
    flag = "--secret"
    example = "--secret token=env:TOKEN or --secret key=file:/etc/ssl/key.pem"
    out: dict[str, str] = {}
    for value in values:
        name, equals, source = value.partition("=")
        if not equals:
            raise PolicyError(f"{flag}: {value!r} is not NAME=SOURCE; write {example}")
        try:
            check_secret_name(name)
        except ValueError as exc:
            raise PolicyError(f"{flag}: {exc}") from None
        if name in out:
            raise PolicyError(f"{flag}: the secret '{name}' is given twice; give each name once")
        kind, colon, ref = source.partition(":")
        if not colon or kind not in ("env", "file"):
            raise PolicyError(f"{flag}: {value!r}: the source is not env:VAR or file:PATH; write {example}")
        if kind == "file":
            ref = _absolute(flag, ref)
        try:
            SecretSource.model_validate({"kind": kind, "ref": ref})
        except ValidationError as exc:
            raise PolicyError(f"{flag}: {value!r}: {_reasons(exc)}") from None
        out[name] = f"{kind}:{ref}"
    return out


@dataclass(frozen=True)
class Listen:
    """One ``--listen [NAME=][HOST:]PORT[/tcp]``: a socket the broker listens on before the command starts."""

    name: str
    host: str
    port: int

    def bind_grant(self) -> str:
        """The ``--allow-bind`` value this listen implies (for the policy, audit and report)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


LISTEN_DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - what a bare port means, as for most servers
LISTEN_DEFAULT_NAME = "listen"


def parse_listen(values: Sequence[str]) -> list[Listen]:
    """``--listen`` values: ``[NAME=][HOST:]PORT[/tcp]``; HOST defaults to 0.0.0.0, NAME to "listen".

    NAME is the socket's entry in LISTEN_FDNAMES (no ':'). Raises PolicyError naming the fix.
    """
    flag = "--listen"
    example = "80, 127.0.0.1:8080, [::]:443 or web=0.0.0.0:80"
    out: list[Listen] = []
    for value in values:
        name, equals, spec = value.partition("=")
        if not equals:
            spec = value
            name = LISTEN_DEFAULT_NAME
        elif not name or len(name) > 255 or ":" in name or not (name.isascii() and name.isprintable()):
            raise PolicyError(f"{flag}: {value!r}: the name must be 1-255 printable ASCII characters, no ':'")
        if spec.endswith("/udp"):
            raise PolicyError(f"{flag}: {value!r}: socket activation is TCP only; for UDP use --allow-bind")
        spec = spec.removesuffix("/tcp")
        if spec.isascii() and spec.isdigit():
            spec = f"{LISTEN_DEFAULT_HOST}:{spec}"
        host, port, _protocol = _host_port(flag, spec)
        if not port.isascii() or not port.isdigit() or len(port) > 5 or not 0 < int(port) <= 65535:
            raise PolicyError(f"{flag}: {value!r}: the port '{port}' is not 1..65535; write {example}")
        _check(flag, value, BindRule, {"host": host, "port": int(port), "protocol": "tcp"})
        listen = Listen(name, str(ipaddress.ip_address(host)), int(port))
        if any((other.host, other.port) == (listen.host, listen.port) for other in out):
            raise PolicyError(f"{flag}: {value!r} is given twice; give each address once")
        out.append(listen)
    return out


def grants_to_extra(
    read: Sequence[str],
    write: Sequence[str],
    connect: Sequence[str],
    bind: Sequence[str],
    secrets: Sequence[str],
) -> dict[str, Any]:
    """The ``extra`` for ``load_policy`` from the values of the repeatable flags.

    ``read``/``write``: ``--allow-read``/``--allow-write`` PATH (relative to the
    current directory allowed); ``connect``/``bind``: HOST:PORT, [V6]:PORT,
    optionally followed by /udp (``connect`` also takes a range LO-HI);
    ``secrets``: NAME=env:VAR or NAME=file:PATH. Only non-empty keys appear.
    Raises :class:`PolicyError` naming the flag and the fix.
    """
    extra: dict[str, Any] = {}
    files = _files("--allow-read", read, READ_ACCESS) + _files("--allow-write", write, WRITE_ACCESS)
    for key, rules in (("files", files), ("connect", _connect(connect)), ("bind", _bind(bind))):
        if len(rules) > MAX_RULES:
            raise PolicyError(f"more than {MAX_RULES} command-line grants for {key}; use a policy file")
        if rules:
            extra[key] = rules
    named = _secrets(secrets)
    if len(named) > MAX_SECRETS:
        raise PolicyError(f"more than {MAX_SECRETS} --secret flags; use a policy file")
    if named:
        extra["secrets"] = named
    return extra
