"""The policy as an immutable, validated model.

Pure: no file system, no syscalls. A policy says what the child sees directly
(``view``: bound read-only into its own mount namespace and allowed by
Landlock), which syscalls it may make, its resource limits and environment.
Brokered grants (files, network, secrets) extend this model in later versions.
Every model forbids unknown keys, so a typo is an error, never a silent no-op.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _check_abs_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a path must not contain a NUL byte")
    if not value.startswith("/"):
        raise ValueError(f"'{value}' is not absolute; write the full path, starting with '/'")
    parts = value.split("/")
    if ".." in parts or "." in parts:
        raise ValueError(f"'{value}' contains '.' or '..'; write the path without them")
    return value


#: An absolute, normalised path; checked item by item so errors name the index.
AbsPath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_check_abs_path)]


class View(_Strict):
    """What the child sees of the file system without asking the broker."""

    read: tuple[AbsPath, ...] = ()
    """Bound read-only (read, list, execute); a path that does not exist is an error."""
    read_if_exists: tuple[AbsPath, ...] = ()
    """Like ``read``, but silently absent when the host lacks the path (e.g. /lib64)."""
    tmp: bool = False
    """A private, empty tmpfs at /tmp, writable by the child, gone when it ends."""
    tmp_size_mb: Annotated[int, Field(ge=1, le=65536)] = 64


class Syscalls(_Strict):
    """The seccomp allowlist: named groups (``@file-system``) and single names."""

    allow: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    default: Literal["eperm", "enosys", "kill"] = "eperm"
    """What a syscall outside the allowlist gets: an error, or the child is killed."""


class Limits(_Strict):
    """Resource limits (setrlimit) and the broker-enforced wall-clock timeout."""

    open_files: Annotated[int, Field(ge=8, le=1_048_576)] = 256
    processes: Annotated[int, Field(ge=1, le=65536)] = 128
    address_space_mb: Annotated[int, Field(ge=16, le=1 << 30)] = 8192
    file_size_mb: Annotated[int, Field(ge=0, le=1 << 30)] = 1024
    cpu_seconds: Annotated[int, Field(ge=1, le=1 << 30)] = 3600
    timeout_seconds: Annotated[float, Field(ge=0, le=1 << 30)] = 0
    """0 means no wall-clock timeout."""


class Env(_Strict):
    """The child's environment: rebuilt from nothing, never inherited wholesale."""

    pass_through: tuple[Annotated[str, Field(max_length=128)], ...] = Field(
        default=("TERM", "LANG", "LC_ALL", "LC_CTYPE", "TZ"), alias="pass"
    )
    set: dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict
    )
    cwd: AbsPath = "/"

    @field_validator("pass_through")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"'{name}' is not a valid environment variable name")
            if name == "PRIVSEP_FD":
                raise ValueError("PRIVSEP_FD is set by privsep itself")
        return value

    @field_validator("set")
    @classmethod
    def _set_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"'{name}' is not a valid environment variable name")
            if name == "PRIVSEP_FD":
                raise ValueError("PRIVSEP_FD is set by privsep itself")
            if "\x00" in val:
                raise ValueError(f"the value of {name} contains a NUL byte")
        return value


class Policy(_Strict):
    """A whole policy after ``extends`` has been resolved and variables expanded."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: Annotated[str, Field(max_length=4096)] = ""
    view: View = View()
    syscalls: Syscalls = Syscalls()
    limits: Limits = Limits()
    env: Env = Env()


class PolicyFile(_Strict):
    """One TOML file as written, before ``extends`` is resolved."""

    description: Annotated[str, Field(max_length=4096)] = ""
    extends: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    view: dict[str, object] = Field(default_factory=dict)
    syscalls: dict[str, object] = Field(default_factory=dict)
    limits: dict[str, object] = Field(default_factory=dict)
    env: dict[str, object] = Field(default_factory=dict)
