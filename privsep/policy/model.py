"""The policy as an immutable, validated model.

Pure: no file system, no syscalls, no DNS. A policy says what the child sees
directly (``view``: bound read-only into its own mount namespace and allowed
by Landlock), which syscalls it may make, its resource limits and environment;
and what the broker does for it on request: open files (``files``), connect
(``connect``), bind (``bind``) and hand out secrets (``secrets``). Every model
forbids unknown keys, so a typo is an error, never a silent no-op. Decisions
over these rules live in :mod:`privsep.policy.decide`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from privsep.protocol import MAX_PATH, SECRET_NAME

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, use_attribute_docstrings=True)


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
AbsPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_check_abs_path)]


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
    """Resource limits: the sandbox's cgroup (memory, processes, CPU of the whole sandbox),
    setrlimit (per process) and the broker-enforced wall-clock timeout."""

    open_files: Annotated[int, Field(ge=8, le=1_048_576)] = 256
    processes: Annotated[int, Field(ge=1, le=65536)] = 128
    """Processes and threads of the whole sandbox at once (its pids cgroup; without a cgroup,
    RLIMIT_NPROC, which the kernel counts per uid)."""
    memory_mb: Annotated[int, Field(ge=32, le=1 << 30)] = 1024
    """Memory of the whole sandbox (its memory cgroup): anonymous memory, memfds, shm, /tmp,
    page cache and kernel memory its processes are charged for; no swap. Past it, the
    whole sandbox is killed (exit status 137)."""
    cpu_percent: Annotated[int, Field(ge=0, le=100_000)] = 0
    """CPU time of the whole sandbox per wall-clock time, in percent of one CPU (200: two
    CPUs' worth); 0, the default: no quota (RLIMIT_CPU still caps each process's total)."""
    cgroups: Literal["required", "optional", "off"] = "required"
    """"required": no sandbox starts without its cgroup. "optional": without one where this host
    cannot give it (said at every start). "off": never (said at every start too)."""
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
    cwd: AbsPath | None = None
    """The child's working directory. None (the default): where privsep was started, when the
    view shows that directory (as bwrap does), else "/"."""

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


# --- brokered files ------------------------------------------------------------------------------


class Access(enum.StrEnum):
    """What a ``[[files]]`` rule grants; the broker derives what a request needs."""

    READ = "read"
    """Open for reading; stat."""
    WRITE = "write"
    """Open an existing file for writing (implies ``append``)."""
    CREATE = "create"
    """Create files and directories, remove entries, rename: anything that changes a directory."""
    APPEND = "append"
    """Open with O_APPEND only."""
    TRUNCATE = "truncate"
    """Open with O_TRUNC."""
    LIST = "list"
    """List a directory; stat."""
    CONNECT = "connect"
    """Connect to a unix socket at that path."""


ACCESS_WORDS = tuple(a.value for a in Access)


def _check_norm_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a path must not contain a NUL byte")
    if not value.startswith("/"):
        raise ValueError(f"'{value}' is not absolute; write the full path, starting with '/'")
    if value != "/" and any(part in ("", ".", "..") for part in value[1:].split("/")):
        fixed = "/" + posixpath.normpath(value).lstrip("/")
        raise ValueError(
            f"'{value}' is not normalised (an empty, '.' or '..' component, or a trailing '/'); "
            f"write '{fixed}'"
        )
    return value


#: An absolute path with no '.', '..', empty component or trailing '/' (except "/" itself).
NormPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_check_norm_path)]


class FileRule(_Strict):
    """One ``[[files]]`` entry: a path the broker opens for the child, or a path it never opens."""

    path: NormPath
    """Absolute and normalised."""
    access: tuple[Access, ...] = Field(default=(), max_length=len(Access))
    """What the grant allows; empty on a deny rule."""
    recursive: bool = True
    """The path and everything beneath it (separator-aware: /srv/data never covers /srv/database)."""
    symlinks: bool = False
    """Follow symlinks beneath the grant (resolution still never leaves it)."""
    deny: bool = False
    """A deny rule: grants nothing, and wins over every grant that covers the same path."""
    serve: Literal["kernel", "broker"] = "kernel"
    """Who serves the grant. "kernel" (the default): where the kernel can enforce the access by
    itself, the path is bound into the child's view (read-only unless the grant writes) and
    Landlock allows exactly the granted access, so unmodified programs use it natively. "broker":
    every open goes through the broker, which decides and audits each one. A grant the kernel
    cannot express (append-only, unix socket connect, an exact directory) is broker-served either
    way; ``privsep policy check`` says which and why."""

    @field_validator("access", mode="before")
    @classmethod
    def _access_words(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value  # the type check reports it
        out: list[Access] = []
        for word in value:
            if not isinstance(word, str) or word not in ACCESS_WORDS:
                raise ValueError(f"unknown access {word!r}; valid access words: {', '.join(ACCESS_WORDS)}")
            if Access(word) not in out:
                out.append(Access(word))
        return tuple(out)

    @model_validator(mode="after")
    def _deny_or_grant(self) -> FileRule:
        if self.deny and self.access:
            raise ValueError(
                "access: a deny rule grants nothing; remove access, or set deny = false to make it a grant"
            )
        if self.deny and self.symlinks:
            raise ValueError("symlinks: a deny rule grants nothing to follow; remove symlinks")
        if self.deny and "serve" in self.model_fields_set:
            raise ValueError(
                "serve: a deny rule serves nothing; the kernel masks the path and the broker refuses it"
            )
        if not self.deny and not self.access:
            raise ValueError(
                f'access: a grant must say what it allows, e.g. access = ["read", "list"] '
                f"(valid: {', '.join(ACCESS_WORDS)}); or set deny = true to forbid the path"
            )
        return self

    def describe(self, index: int) -> str:
        """``files[2] (/srv/data, recursive)``: how decisions name this rule."""
        what = ("deny, " if self.deny else "") + ("recursive" if self.recursive else "exact path")
        return f"files[{index}] ({self.path}, {what})"


# --- brokered network ----------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Used with fullmatch: "$" alone also matches before a final LF ("x\n" would pass as a label).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: A last label that inet_aton() would read as a number ("127.1", "1.0x7f"): never a host name.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)")
MAX_RULES = 1024


def host_name(value: str) -> str | None:
    """``value`` as a canonical RFC 1123 host name (lower case, no trailing dot), or None.

    Pure and total: used on policy text and on the child's requests alike.
    A name whose last label is numeric is refused (the resolver would read
    "127.1" as an address).
    """
    if not value.isascii():
        return None  # "\u212a".lower() == "k": match only what the resolver is given
    name = value.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return name


def ip_literal(value: str) -> IPAddress | None:
    """``value`` as an IP address, or None; zone ids ("fe80::1%eth0") are refused."""
    if "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _network(host: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(host)
    except ValueError:
        return None


def _check_connect_host(value: str) -> str:
    if value.startswith("[") or value.endswith("]"):
        raise ValueError(f"'{value}': write an IPv6 address without brackets, e.g. ::1")
    if "%" in value:
        raise ValueError(f"'{value}': IPv6 zone ids are not supported; write the address without '%...'")
    if "/" in value:
        try:
            return str(ipaddress.ip_network(value))
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.ip_network(value, strict=False)
                raise ValueError(f"'{value}' has host bits set; write '{fixed}'") from None
            raise ValueError(
                f"'{value}' is not a valid CIDR network; write e.g. 10.0.0.0/8 or fd00::/8"
            ) from None
    ip = ip_literal(value)
    if ip is not None:
        return str(ip)
    wildcard = value.startswith("*.")
    name = host_name(value[2:] if wildcard else value)
    if name is None:
        raise ValueError(
            f"'{value}' is not an IP address, a CIDR network or a host name; a host name is "
            "dot-separated labels of letters, digits and '-' (RFC 1123) whose last label is not "
            "a number, optionally starting with '*.' (e.g. db.internal, *.example.com)"
        )
    return f"*.{name}" if wildcard else name


def _parse_port(word: int | str, lowest: int) -> int | None:
    if isinstance(word, bool):
        return None
    if isinstance(word, str):
        if not word.isascii() or not word.isdigit() or len(word) > 5:
            return None
        word = int(word)
    return word if lowest <= word <= 65535 else None


def parse_port_spec(item: object) -> tuple[int, int]:
    """One ``ports`` item, 8080 or "8000-8100", as an inclusive range; ValueError teaches."""
    if isinstance(item, int) and not isinstance(item, bool):
        port = _parse_port(item, 1)
        if port is None:
            raise ValueError(f"port {item} is out of range; ports are 1..65535")
        return port, port
    if isinstance(item, str):
        lo_text, dash, hi_text = item.partition("-")
        lo = _parse_port(lo_text, 1)
        hi = _parse_port(hi_text, 1) if dash else None
        if lo is not None and hi is not None:
            if lo > hi:
                raise ValueError(f"port range '{item}' is backwards; write '{hi}-{lo}'")
            return lo, hi
    raise ValueError(
        f"{item!r} is not a port or a port range; write a number 1..65535 (8080) "
        'or a range as a string ("8000-8100")'
    )


_PORT_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": "^[0-9]{1,5}-[0-9]{1,5}$"},
    ]
}
PortSpec = Annotated[int | str, WithJsonSchema(_PORT_SCHEMA)]


class ConnectRule(_Strict):
    """One ``[[connect]]`` entry: where the broker may connect for the child, or never."""

    host: Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_check_connect_host)]
    """An IP, a CIDR network, or a host name ("db.internal", "*.example.com"); stored canonical."""
    ports: tuple[PortSpec, ...] = Field(default=(), max_length=MAX_RULES)
    """Ports and "lo-hi" ranges, 1..65535; a grant needs at least one; empty on a deny rule: every port."""
    protocol: Literal["tcp", "udp"] = "tcp"
    deny: bool = False
    """A deny rule (IP/CIDR only): addresses no connect may reach, whatever name led there."""

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            for item in value:
                parse_port_spec(item)
        return value

    @model_validator(mode="after")
    def _deny_or_grant(self) -> ConnectRule:
        if self.deny:
            if self.network() is None:
                raise ValueError(
                    f"host: a deny rule takes an IP address or a CIDR network, not the name "
                    f"'{self.host}' (what a name resolves to changes); write e.g. 10.0.0.0/8"
                )
            if "protocol" in self.model_fields_set:
                raise ValueError("protocol: a deny rule applies to tcp and udp alike; remove protocol")
        elif not self.ports:
            raise ValueError('ports: a grant must list the ports it allows, e.g. ports = [443, "8000-8100"]')
        return self

    def network(self) -> IPNetwork | None:
        """The rule's network (an IP is a /32 or /128), or None for a host-name rule."""
        return _network(self.host)

    def port_ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(parse_port_spec(p) for p in self.ports)

    def allows_port(self, port: int) -> bool:
        """``port`` is listed; a deny rule with no ports covers every port."""
        if not self.ports:
            return self.deny
        return any(lo <= port <= hi for lo, hi in self.port_ranges())

    def describe(self, index: int) -> str:
        """``connect[1] (*.example.com, tcp 443, 8000-8100)``: how decisions name this rule."""
        if self.deny:
            ports = ", ".join(str(p) for p in self.ports) or "every port"
            return f"connect[{index}] ({self.host}, deny, {ports})"
        return f"connect[{index}] ({self.host}, {self.protocol} {', '.join(str(p) for p in self.ports)})"


def _check_bind_host(value: str) -> str:
    ip = ip_literal(value)
    if ip is None:
        hint = "127.0.0.1" if value.lower().rstrip(".") == "localhost" else "0.0.0.0, 127.0.0.1 or ::1"
        raise ValueError(f"'{value}' is not an IP address; a bind host is an address, write {hint}")
    return str(ip)


class BindRule(_Strict):
    """One ``[[bind]]`` entry: an exact address, port and protocol the broker binds for the child."""

    host: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_bind_host)]
    """An IP address; 0.0.0.0 allows binding 0.0.0.0 only, not any address."""
    port: Annotated[int, Field(ge=0, le=65535)]
    """0 allows only port 0 (the kernel picks)."""
    protocol: Literal["tcp", "udp"] = "tcp"

    def address(self) -> IPAddress:
        return ipaddress.ip_address(self.host)

    def describe(self, index: int) -> str:
        return f"bind[{index}] ({self.host}, {self.protocol} {self.port})"


# --- secrets -------------------------------------------------------------------------------------

MAX_SECRETS = 256


class SecretSource(_Strict):
    """Where the broker reads a secret: written "env:VAR" or "file:/abs/path" in a policy."""

    kind: Literal["env", "file"]
    ref: Annotated[str, Field(min_length=1, max_length=MAX_PATH)]

    @model_validator(mode="after")
    def _ref(self) -> SecretSource:
        if self.kind == "env":
            if not _ENV_NAME.match(self.ref):
                raise ValueError(f"'env:{self.ref}': '{self.ref}' is not a valid environment variable name")
        else:
            if "\x00" in self.ref:
                raise ValueError("the secret's file path contains a NUL byte")
            if not self.ref.startswith("/"):
                raise ValueError(
                    f"'file:{self.ref}': a secret's file path must be absolute; write file:/full/path"
                )
        return self

    @classmethod
    def parse(cls, text: str) -> SecretSource:
        """Parse "env:VAR" or "file:/abs/path"; ValueError (pydantic's) teaches."""
        return cls.model_validate(_split_source(text))

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


def _split_source(value: object) -> object:
    if not isinstance(value, str):
        return value
    kind, colon, ref = value.partition(":")
    if not colon or kind not in ("env", "file"):
        raise ValueError(f'\'{value}\' is not a secret source; write "env:VARIABLE" or "file:/absolute/path"')
    return {"kind": kind, "ref": ref}


def check_secret_name(name: str) -> str:
    """``name``, if the wire can carry it (``protocol.SECRET_NAME``); else a ValueError that teaches."""
    if not SECRET_NAME.fullmatch(name):
        raise ValueError(f"'{name}' is not a valid secret name; use 1-64 letters, digits, '_', '.' or '-'")
    return name


SecretName = Annotated[str, AfterValidator(check_secret_name)]


# --- egress by host name (issue 17) --------------------------------------------------------------

MAX_PINNED = 1024
MAX_PINNED_ADDRESSES = 16
MAX_INJECTED = 64
_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")  # \Z: "$" lets a final newline by
#: Headers the proxy sets or drops itself: never injected (privsep.egress.proxyhttp).
_RESERVED_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
     "content-length", "via"}
)  # fmt: skip


def pinned_hosts(value: Any) -> Any:
    """``{"api.test" = "127.0.0.1"}``, or a list of addresses per name, made canonical
    (lower-case names, each address once); ValueError teaches. The one check of a pin table:
    the broker's resolver reads the model's (privsep.egress.names.PinnedHosts)."""
    if not isinstance(value, dict):
        return value  # the type check reports it
    if len(value) > MAX_PINNED:
        raise ValueError(f"at most {MAX_PINNED} pinned names")
    out: dict[str, tuple[str, ...]] = {}
    for key, given in value.items():
        name = host_name(key) if isinstance(key, str) else None
        if name is None:
            raise ValueError(
                f"{key!r} is not a host name; a pinned name is an exact RFC 1123 name "
                "(letters, digits and '-', no wildcard), e.g. api.test"
            )
        if name in out:
            raise ValueError(f"{key!r} is pinned twice (names are compared in lower case)")
        texts = [given] if isinstance(given, str) else list(given) if isinstance(given, (list, tuple)) else []
        if not 1 <= len(texts) <= MAX_PINNED_ADDRESSES:
            raise ValueError(
                f"{key!r}: give 1 to {MAX_PINNED_ADDRESSES} IP addresses (a pinned name needs 1 to "
                f"{MAX_PINNED_ADDRESSES})"
            )
        addresses: list[str] = []
        for text in texts:
            address = ip_literal(text) if isinstance(text, str) else None
            if address is None:
                raise ValueError(f"{key!r} = {text!r}: write an IP address, e.g. 127.0.0.1 or ::1")
            if str(address) not in addresses:
                addresses.append(str(address))
        out[name] = tuple(addresses)
    return out


def _check_inject_source(value: str) -> str:
    SecretSource.parse(value)  # "env:VAR" or "file:/abs/path"; raises what teaches
    return value


class Inject(_Strict):
    """One header the proxy adds to plain-HTTP requests for one host, read from a source the
    child cannot ask for (it is no ``[secrets]`` entry, so ``client.secret`` never hands it out)."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    """An exact host name (no wildcard, no IP): the name the client asks the proxy for."""
    header: Annotated[str, Field(min_length=1, max_length=64)]
    """The header's name, e.g. Authorization; the client's own header of that name is dropped."""
    source: Annotated[str, Field(min_length=5, max_length=MAX_PATH), AfterValidator(_check_inject_source)]
    """Where the broker reads the value: "env:VARIABLE" or "file:/absolute/path", as in [secrets]."""
    prefix: Annotated[str, Field(max_length=256)] = ""
    """Put before the value, e.g. "Bearer "."""

    @field_validator("host")
    @classmethod
    def _exact_name(cls, value: str) -> str:
        name = host_name(value)
        if name is None:
            raise ValueError(
                f"'{value}' is not an exact host name (RFC 1123, no wildcard, not an IP address)"
            )
        return name

    @field_validator("header")
    @classmethod
    def _token(cls, value: str) -> str:
        if not _HEADER_TOKEN.fullmatch(value):
            raise ValueError(f"'{value}' is not an HTTP header name (a token: letters, digits, '-'...)")
        lowered = value.lower()
        if lowered in _RESERVED_HEADERS or lowered.startswith("proxy-"):
            raise ValueError(f"'{value}' is a header the proxy sets or drops itself; inject another")
        return value

    @field_validator("prefix")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isascii() or not all(c.isprintable() or c == "\t" for c in value):
            raise ValueError("the prefix must be printable ASCII (no CR, LF or other control character)")
        return value


class Network(_Strict):
    """Egress by host name for unmodified programs: the sandbox's own resolver, names pinned to
    addresses, and an allowlisting HTTP and SOCKS5 proxy. Each allows only what the
    ``[[connect]]`` rules allow (``privsep.egress`` says how)."""

    hosts: Annotated[dict[str, tuple[str, ...]], BeforeValidator(pinned_hosts)] = Field(default_factory=dict)
    """Names the broker answers with these addresses, never looking them up on the host:
    ``{ "api.test" = "127.0.0.1" }`` (or a list of addresses). A pinned name still needs a
    [[connect]] rule that names it."""
    dns: bool | None = None
    """The sandbox's resolver (127.0.0.53, in its /etc/resolv.conf): A and AAAA answers for the
    names a [[connect]] grant names, NXDOMAIN for every other name, which never leaves the
    host. None (the default): on when a [[connect]] grant names a host."""
    proxy: bool = False
    """An HTTP proxy (127.0.0.1:3128: CONNECT, and plain http:// requests) and a SOCKS5 proxy
    (127.0.0.1:1080) inside the sandbox, served by the broker; HTTP_PROXY, HTTPS_PROXY,
    ALL_PROXY and NO_PROXY (and their lower-case forms) set in its environment."""
    inject: tuple[Inject, ...] = Field(default=(), max_length=MAX_INJECTED)
    """Headers the proxy adds to plain-HTTP requests for a host (``proxy`` must be on)."""


# --- the whole policy ----------------------------------------------------------------------------


class Transparent(_Strict):
    """Brokering for programs that do not speak privsep's protocol (``cat``, ``curl``, a Go binary).

    When on, the seccomp filter sends their ``open``/``openat`` (files) or
    ``connect`` and ``bind`` (net) to the broker, which decides them by the same rules as a
    ``privsep.client`` request, performs them itself and hands the result into
    the child. Each kind is active only when the policy has rules of that kind
    ([[files]]; [[connect]] for connect, [[bind]] for bind): with nothing to broker, the filter stays as fast
    as without it. Turn a kind off when every program in the sandbox uses
    ``privsep.client``: each open then costs no round trip to the broker.
    """

    files: bool = True
    net: bool = True


class Policy(_Strict):
    """A whole policy after ``extends`` has been resolved and variables expanded."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: Annotated[str, Field(max_length=4096)] = ""
    view: View = View()
    syscalls: Syscalls = Syscalls()
    limits: Limits = Limits()
    env: Env = Env()
    files: tuple[FileRule, ...] = Field(default=(), max_length=MAX_RULES)
    """Brokered file access; ``files[i]`` in a denial message is this tuple's index."""
    connect: tuple[ConnectRule, ...] = Field(default=(), max_length=MAX_RULES)
    """Brokered outgoing connections."""
    bind: tuple[BindRule, ...] = Field(default=(), max_length=MAX_RULES)
    """Brokered bound or listening sockets."""
    secrets: dict[SecretName, Annotated[SecretSource, BeforeValidator(_split_source)]] = Field(
        default_factory=dict, max_length=MAX_SECRETS
    )
    """Name -> source; read by the broker, handed over as a sealed memfd on request."""
    transparent: Transparent = Transparent()
    network: Network = Network()

    @property
    def transparent_files(self) -> bool:
        """Whether unmodified programs' opens are brokered (there are [[files]] rules to serve)."""
        return self.transparent.files and any(not rule.deny for rule in self.files)

    @property
    def transparent_net(self) -> bool:
        """Whether unmodified programs' connects are brokered (there are [[connect]] rules)."""
        return self.transparent.net and any(not rule.deny for rule in self.connect)

    @property
    def transparent_bind(self) -> bool:
        """Whether unmodified programs' binds are brokered (there are [[bind]] rules)."""
        return self.transparent.net and bool(self.bind)

    @property
    def egress_dns(self) -> bool:
        """Whether the sandbox gets privsep's resolver: [network] dns, by default on when a
        [[connect]] grant names a host; never without brokered connects (nothing to reach)."""
        if not self.transparent_net:
            return False
        if self.network.dns is not None:
            return self.network.dns
        return any(not rule.deny and rule.network() is None for rule in self.connect)

    @property
    def egress_proxy(self) -> bool:
        """Whether the sandbox gets privsep's HTTP and SOCKS5 proxies ([network] proxy)."""
        return self.network.proxy and self.transparent_net

    @model_validator(mode="after")
    def _egress_has_rules(self) -> Policy:
        """[network] dns and proxy serve [[connect]] grants: without one they would serve nothing."""
        for key, on in (("dns", self.network.dns is True), ("proxy", self.network.proxy)):
            if on and not self.transparent_net:
                why = (
                    "[transparent] net = false, so the child can make no TCP or UDP socket to reach it"
                    if any(not rule.deny for rule in self.connect)
                    else "there is no [[connect]] grant for it to allow"
                )
                raise ValueError(
                    f"network.{key}: {why}; add a grant (--allow-connect api.example.com:443) or remove it"
                )
        if self.network.inject and not self.network.proxy:
            raise ValueError("network.inject: headers are added by the proxy; set [network] proxy = true")
        env = (*self.env.pass_through, *self.env.set)
        for index, inject in enumerate(self.network.inject):
            source = SecretSource.parse(inject.source)
            if source.kind == "env" and source.ref in env:
                raise ValueError(
                    f"network.inject[{index}]: its variable {source.ref} is also in the child's environment "
                    "([env] pass or set); remove it there: the child must never hold the value"
                )
        return self

    @model_validator(mode="after")
    def _links_do_not_lead_around_rules(self) -> Policy:
        """A grant that follows symlinks may hold no other rule beneath it.

        A link inside it could lead to the inner path under another name, which the
        outer grant would decide: around a deny rule, or past a narrower grant.
        """
        for index, rule in enumerate(self.files):
            if rule.deny or not rule.symlinks:
                continue
            prefix = rule.path.rstrip("/") + "/"
            for inner, other in enumerate(self.files):
                if other.path.startswith(prefix) and other.path != rule.path:
                    raise ValueError(
                        f"files[{index}] ({rule.path}) follows symlinks, and files[{inner}] ({other.path}) "
                        "lies beneath it: a link could reach the inner path under another name, decided "
                        "by the outer rule; remove symlinks = true, or move the inner rule out"
                    )
        return self

    @field_validator("secrets")
    @classmethod
    def _secrets_stay_secret(
        cls, value: dict[str, SecretSource], info: ValidationInfo
    ) -> dict[str, SecretSource]:
        env = info.data.get("env")
        if not isinstance(env, Env):
            return value
        for name, source in value.items():
            if source.kind != "env":
                continue
            for where, names in (("env.pass", env.pass_through), ("env.set", tuple(env.set))):
                if source.ref in names:
                    raise ValueError(
                        f"{name}: its variable {source.ref} is also in {where}, so the secret would reach "
                        f"the child's environment; remove {source.ref} from {where} (the child asks for "
                        f"the secret with client.secret('{name}'))"
                    )
        return value


def _array_of_tables(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        raise ValueError(f"'{key}' is an array of tables: write [[{key}]], not [{key}]")
    return value


class PolicyFile(_Strict):
    """One TOML file as written, before ``extends`` is resolved.

    Only the shape is checked here; ``extends`` merges files (tables key by
    key, arrays such as ``[[files]]`` concatenated, parent first) and the
    result is validated as a :class:`Policy`.
    """

    description: Annotated[str, Field(max_length=4096)] = ""
    extends: Annotated[str, Field(min_length=1, max_length=MAX_PATH)] | None = None
    view: dict[str, object] = Field(default_factory=dict)
    syscalls: dict[str, object] = Field(default_factory=dict)
    limits: dict[str, object] = Field(default_factory=dict)
    env: dict[str, object] = Field(default_factory=dict)
    files: list[dict[str, object]] = Field(default_factory=list, max_length=MAX_RULES)
    connect: list[dict[str, object]] = Field(default_factory=list, max_length=MAX_RULES)
    bind: list[dict[str, object]] = Field(default_factory=list, max_length=MAX_RULES)
    secrets: dict[str, object] = Field(default_factory=dict, max_length=MAX_SECRETS)
    transparent: dict[str, object] = Field(default_factory=dict)
    network: dict[str, object] = Field(default_factory=dict)

    @field_validator("files", "connect", "bind", mode="before")
    @classmethod
    def _tables(cls, value: Any, info: ValidationInfo) -> Any:
        return _array_of_tables(str(info.field_name), value)
