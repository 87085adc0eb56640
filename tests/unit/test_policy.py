"""Loading and validating policies: every error names the field and the fix; grants; the schema."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from privsep import protocol
from privsep.errors import PolicyError
from privsep.policy.grants import grants_to_extra
from privsep.policy.load import load_policy, shipped_names
from privsep.policy.model import Access, FileRule, Policy, SecretSource
from privsep.policy.schema import policy_json_schema


def load(tmp_path: Path, text: str, extra: dict[str, Any] | None = None, name: str = "p.toml") -> Policy:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_policy(str(path), extra=extra)


def error(tmp_path: Path, text: str, extra: dict[str, Any] | None = None) -> str:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text, extra)
    return str(info.value)


# --- what loads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(shipped_names()) - {"web-daemon"}))
def test_shipped_policies_load_with_no_brokered_grants(name: str) -> None:
    policy = load_policy(name)
    assert (policy.files, policy.connect, policy.bind, policy.secrets) == ((), (), (), {})


def test_web_daemon_brokers_its_ports_document_root_and_key_and_nothing_else() -> None:
    policy = load_policy("web-daemon")
    assert [(b.host, b.port, b.protocol) for b in policy.bind] == [
        ("0.0.0.0", 80, "tcp"),  # noqa: S104 - the shipped rule, not a bind
        ("0.0.0.0", 443, "tcp"),  # noqa: S104
    ]
    assert [(f.path, f.access, f.deny) for f in policy.files] == [
        ("/srv/www", (Access.READ, Access.LIST), False)
    ]
    assert {name: str(source) for name, source in policy.secrets.items()} == {
        "tls_key": "file:/etc/privsep/tls/key.pem"
    }
    assert policy.connect == ()


def test_a_full_policy_loads_canonical(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """
[[files]]
path = "/srv/in"
access = ["read", "list", "read"]

[[files]]
path = "/srv/in/private"
deny = true
recursive = false

[[connect]]
host = "DB.Internal."
ports = [5432, "8000-8100"]

[[connect]]
host = "*.Example.com"
ports = [443]
protocol = "udp"

[[connect]]
host = "10.0.0.0/8"
deny = true

[[connect]]
host = "::0001"
ports = [80]

[[bind]]
host = "0:0::0"
port = 0

[secrets]
token = "env:TOKEN"
tls_key = "file:/etc/ssl/private/key.pem"
""",
    )
    first, private = policy.files
    assert first == FileRule(path="/srv/in", access=(Access.READ, Access.LIST))
    assert (first.recursive, first.symlinks, first.deny) == (True, False, False)
    assert private.deny and not private.recursive and private.access == ()
    hosts = [rule.host for rule in policy.connect]
    assert hosts == ["db.internal", "*.example.com", "10.0.0.0/8", "::1"]
    assert policy.connect[0].port_ranges() == ((5432, 5432), (8000, 8100))
    assert policy.connect[1].protocol == "udp"
    assert policy.connect[2].allows_port(1) and policy.connect[2].allows_port(65535)
    assert policy.connect[0].network() is None
    assert str(policy.connect[3].network()) == "::1/128"
    assert policy.bind[0].host == "::" and policy.bind[0].protocol == "tcp"
    assert policy.secrets == {
        "token": SecretSource(kind="env", ref="TOKEN"),
        "tls_key": SecretSource(kind="file", ref="/etc/ssl/private/key.pem"),
    }
    assert str(policy.secrets["token"]) == "env:TOKEN"


def test_extends_concatenates_rules_parent_first_and_merges_secrets(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        """
[[files]]
path = "/srv/base"
access = ["read"]

[[connect]]
host = "127.0.0.1"
ports = [1]

[secrets]
a = "env:A"
b = "env:B"
""",
        encoding="utf-8",
    )
    policy = load(
        tmp_path,
        """
extends = "base.toml"

[[files]]
path = "/srv/child"
access = ["write"]

[[bind]]
host = "127.0.0.1"
port = 8080

[secrets]
b = "file:/run/b"
c = "env:C"
""",
    )
    assert [r.path for r in policy.files] == ["/srv/base", "/srv/child"]
    assert [r.host for r in policy.connect] == ["127.0.0.1"]
    assert [r.port for r in policy.bind] == [8080]
    assert {k: str(v) for k, v in policy.secrets.items()} == {"a": "env:A", "b": "file:/run/b", "c": "env:C"}


def test_variables_expand_in_file_rules_and_secrets(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """
[[files]]
path = "${sys.prefix}"
access = ["read"]

[secrets]
k = "file:${sys.prefix}/key"
""",
    )
    assert policy.files[0].path == sys.prefix
    assert policy.secrets["k"].ref == f"{sys.prefix}/key"


def test_command_line_grants_come_last_and_are_taken_literally(tmp_path: Path) -> None:
    extra = {"files": [{"path": "/srv/${sys.prefix}", "access": ["read"]}]}
    policy = load(tmp_path, '[[files]]\npath = "/a"\naccess = ["read"]\n', extra)
    assert [r.path for r in policy.files] == ["/a", "/srv/${sys.prefix}"]


# --- what does not load, and what the error says ---------------------------------------------------

FILES_ERRORS = [
    ('path = "/srv"\naccess = ["read"]\ndeny = true', ["files[0]", "access", "deny rule", "deny = false"]),
    ('path = "/srv"\ndeny = true\nsymlinks = true', ["files[0]", "symlinks", "remove symlinks"]),
    ('path = "/srv"', ["files[0]", "access", 'access = ["read", "list"]', "deny = true"]),
    ('path = "/srv"\naccess = []', ["files[0]", "a grant must say what it allows"]),
    (
        'path = "/srv"\naccess = ["read", "exec"]',
        ["files[0].access", "'exec'", "read, write, create, append, truncate, list, connect"],
    ),
    ('path = "/srv"\naccess = "read"', ["files[0].access"]),
    ('path = "srv/data"\naccess = ["read"]', ["files[0].path", "not absolute", "starting with '/'"]),
    ('path = "/srv/data/"\naccess = ["read"]', ["files[0].path", "not normalised", "write '/srv/data'"]),
    ('path = "/srv//data"\naccess = ["read"]', ["files[0].path", "write '/srv/data'"]),
    ('path = "//srv"\naccess = ["read"]', ["files[0].path", "write '/srv'"]),
    ('path = "/srv/./data"\naccess = ["read"]', ["files[0].path", "write '/srv/data'"]),
    ('path = "/srv/x/../data"\naccess = ["read"]', ["files[0].path", "write '/srv/data'"]),
    ('path = "/srv\\u0000"\naccess = ["read"]', ["files[0].path", "NUL"]),
    ('path = ""\naccess = ["read"]', ["files[0].path"]),
    ('path = "/srv"\naccess = ["read"]\nrecursiv = true', ["files[0].recursiv", "unknown key"]),
    (
        'path = "/srv"\naccess = ["read"]\nsymlinks = true\n[[files]]\npath = "/srv/keys"\ndeny = true',
        ["files[0] (/srv) follows symlinks", "files[1] (/srv/keys)", "remove symlinks = true"],
    ),
]


@pytest.mark.parametrize(("body", "expected"), FILES_ERRORS)
def test_files_errors_name_the_field_and_the_fix(tmp_path: Path, body: str, expected: list[str]) -> None:
    message = error(tmp_path, f"[[files]]\n{body}\n")
    for part in expected:
        assert part in message, (part, message)


CONNECT_ERRORS = [
    ('host = "10.0.0.1/8"\nports = [1]', ["connect[0].host", "host bits set", "write '10.0.0.0/8'"]),
    ('host = "10.0.0.0/33"\nports = [1]', ["connect[0].host", "not a valid CIDR"]),
    ('host = "fd00::/129"\nports = [1]', ["connect[0].host", "not a valid CIDR"]),
    ('host = "[::1]"\nports = [1]', ["connect[0].host", "without brackets"]),
    ('host = "fe80::1%eth0"\nports = [1]', ["connect[0].host", "zone"]),
    ('host = "exa mple.com"\nports = [1]', ["connect[0].host", "RFC 1123", "*.example.com"]),
    ('host = "-db.internal"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    ('host = "db..internal"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    ('host = "db_1.internal"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    (f'host = "{"a" * 64}.com"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    ('host = "*"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    ('host = "*.*.example.com"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    ('host = "a.*.example.com"\nports = [1]', ["connect[0].host", "RFC 1123"]),
    ('host = "127.1"\nports = [1]', ["connect[0].host", "not a number"]),
    ('host = "01.2.3.4"\nports = [1]', ["connect[0].host", "not a number"]),
    ('host = ""\nports = [1]', ["connect[0].host"]),
    ('host = "db"', ["connect[0]", "ports", "a grant must list the ports", "ports = [443"]),
    ('host = "db"\nports = [0]', ["connect[0].ports", "out of range", "1..65535"]),
    ('host = "db"\nports = [65536]', ["connect[0].ports", "out of range"]),
    ('host = "db"\nports = ["9-1"]', ["connect[0].ports", "backwards", "write '1-9'"]),
    ('host = "db"\nports = ["0-10"]', ["connect[0].ports", "not a port or a port range"]),
    ('host = "db"\nports = ["80"]', ["connect[0].ports", "not a port or a port range", '"8000-8100"']),
    ('host = "db"\nports = ["http"]', ["connect[0].ports", "'http'"]),
    ('host = "db"\nports = [true]', ["connect[0].ports", "True"]),
    ('host = "db"\nports = [1]\nprotocol = "sctp"', ["connect[0].protocol"]),
    ('host = "db.internal"\ndeny = true', ["connect[0]", "host", "deny rule takes an IP", "10.0.0.0/8"]),
    ('host = "*.example.com"\ndeny = true', ["connect[0]", "deny rule takes an IP"]),
    ('host = "10.0.0.0/8"\ndeny = true\nprotocol = "udp"', ["connect[0]", "protocol", "remove protocol"]),
]


@pytest.mark.parametrize(("body", "expected"), CONNECT_ERRORS)
def test_connect_errors_name_the_field_and_the_fix(tmp_path: Path, body: str, expected: list[str]) -> None:
    message = error(tmp_path, f"[[connect]]\n{body}\n")
    for part in expected:
        assert part in message, (part, message)


BIND_ERRORS = [
    ('host = "localhost"\nport = 80', ["bind[0].host", "not an IP address", "write 127.0.0.1"]),
    ('host = "example.com"\nport = 80', ["bind[0].host", "0.0.0.0, 127.0.0.1 or ::1"]),
    ('host = "10.0.0.0/8"\nport = 80', ["bind[0].host", "not an IP address"]),
    ('host = "0.0.0.0"\nport = 65536', ["bind[0].port", "65535"]),
    ('host = "0.0.0.0"\nport = -1', ["bind[0].port"]),
    ('host = "0.0.0.0"', ["bind[0].port", "required"]),
    ('host = "0.0.0.0"\nport = 1\nprotocol = "raw"', ["bind[0].protocol"]),
]


@pytest.mark.parametrize(("body", "expected"), BIND_ERRORS)
def test_bind_errors_name_the_field_and_the_fix(tmp_path: Path, body: str, expected: list[str]) -> None:
    message = error(tmp_path, f"[[bind]]\n{body}\n")
    for part in expected:
        assert part in message, (part, message)


SECRET_ERRORS = [
    ('t = "TOKEN"', ["secrets.t", "not a secret source", '"env:VARIABLE"', '"file:/absolute/path"']),
    ('t = "vault:x"', ["secrets.t", "not a secret source"]),
    ('t = "env:1X"', ["secrets.t", "not a valid environment variable name"]),
    ('t = "env:"', ["secrets.t"]),
    ('t = "file:key.pem"', ["secrets.t", "must be absolute", "file:/full/path"]),
    ("t = 3", ["secrets.t"]),
    ('"bad name" = "env:X"', ["secrets", "'bad name' is not a valid secret name", "letters, digits"]),
    (f'{"n" * 65} = "env:X"', ["secrets", "not a valid secret name"]),
]


@pytest.mark.parametrize(("body", "expected"), SECRET_ERRORS)
def test_secret_errors_name_the_field_and_the_fix(tmp_path: Path, body: str, expected: list[str]) -> None:
    message = error(tmp_path, f"[secrets]\n{body}\n")
    for part in expected:
        assert part in message, (part, message)


def test_a_secret_variable_may_not_also_be_passed_to_the_child(tmp_path: Path) -> None:
    message = error(tmp_path, '[env]\npass = ["TOKEN"]\n[secrets]\ntoken = "env:TOKEN"\n')
    assert "secrets: token" in message
    assert "TOKEN is also in env.pass" in message
    assert "remove TOKEN from env.pass" in message
    message = error(tmp_path, '[env]\nset = { TOKEN = "x" }\n[secrets]\ntoken = "env:TOKEN"\n')
    assert "TOKEN is also in env.set" in message


def test_the_default_env_pass_list_counts(tmp_path: Path) -> None:
    # env.pass defaults to TERM, LANG, ...: a secret read from TERM would reach the child.
    assert "TERM is also in env.pass" in error(tmp_path, '[secrets]\nt = "env:TERM"\n')


def test_a_table_where_an_array_of_tables_belongs_is_explained(tmp_path: Path) -> None:
    message = error(tmp_path, '[files]\npath = "/srv"\naccess = ["read"]\n')
    assert "write [[files]], not [files]" in message
    assert "write [[bind]]" in error(tmp_path, '[bind]\nhost = "::1"\nport = 1\n')


def test_rule_counts_are_bounded(tmp_path: Path) -> None:
    rules = '[[bind]]\nhost = "::1"\nport = 1\n' * 1025
    assert "bind" in error(tmp_path, rules)
    extra = {"bind": [{"host": "::1", "port": p} for p in range(1025)]}
    message = error(tmp_path, "", extra)
    assert "bind" in message and "1024" in message
    secrets = "[secrets]\n" + "".join(f's{i} = "env:S{i}"\n' for i in range(257))
    assert "secrets" in error(tmp_path, secrets)


def test_the_sandbox_limits_load_with_defaults_and_bounds(tmp_path: Path) -> None:
    """[limits] memory_mb, cpu_percent and cgroups: what the sandbox's cgroup holds it to."""
    policy = load(tmp_path, "")
    assert (policy.limits.memory_mb, policy.limits.cpu_percent, policy.limits.cgroups) == (
        1024,
        0,
        "required",
    )
    policy = load(tmp_path, '[limits]\nmemory_mb = 64\ncpu_percent = 250\ncgroups = "optional"\n')
    assert (policy.limits.memory_mb, policy.limits.cpu_percent, policy.limits.cgroups) == (
        64,
        250,
        "optional",
    )
    assert "limits.memory_mb: Input should be greater than or equal to 32" in error(
        tmp_path, "[limits]\nmemory_mb = 8\n"
    )
    assert "limits.cgroups: Input should be 'required', 'optional' or 'off'" in error(
        tmp_path, '[limits]\ncgroups = "maybe"\n'
    )
    assert "limits.cpu_percent" in error(tmp_path, "[limits]\ncpu_percent = -1\n")
    # The command line's --memory-mb/--processes/--cpu-percent/--no-cgroups arrive as an extra.
    extra = {"limits": {"memory_mb": 96, "cgroups": "off"}}
    assert load(tmp_path, "[limits]\nmemory_mb = 64\nprocesses = 9\n", extra).limits.model_dump() == {
        **load(tmp_path, "").limits.model_dump(),
        "memory_mb": 96,
        "processes": 9,
        "cgroups": "off",
    }


def test_errors_from_command_line_grants_say_so(tmp_path: Path) -> None:
    message = error(tmp_path, "", {"secrets": {"t": "env:LANG"}})
    assert "with the command-line grants" in message
    assert "LANG is also in env.pass" in message


# --- command-line grants -------------------------------------------------------------------------


def test_no_grants_give_an_empty_extra() -> None:
    assert grants_to_extra([], [], [], [], []) == {}


def test_file_grants_are_absolute_and_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    extra = grants_to_extra(["data", ".", "a/../b/", "//srv//x/"], ["/out"], [], [], [])
    assert extra == {
        "files": [
            {"path": f"{cwd}/data", "access": ["read", "list"]},
            {"path": cwd, "access": ["read", "list"]},
            {"path": f"{cwd}/b", "access": ["read", "list"]},
            {"path": "/srv/x", "access": ["read", "list"]},
            {
                "path": "/out",
                "access": ["read", "write", "create", "append", "truncate", "list"],
            },
        ]
    }
    policy = load_policy("minimal", extra=extra)
    assert policy.files[-1].path == "/out" and policy.files[-1].recursive


@pytest.mark.parametrize(
    ("flag_index", "value", "expected"),
    [
        (0, "", "--allow-read: the path is empty"),
        (1, "", "--allow-write: the path is empty"),
        (0, "/a\x00b", "--allow-read: the path contains a NUL byte"),
    ],
)
def test_file_grant_errors_name_the_flag(flag_index: int, value: str, expected: str) -> None:
    args: list[list[str]] = [[], [], [], [], []]
    args[flag_index] = [value]
    with pytest.raises(PolicyError, match=expected):
        grants_to_extra(*args)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("127.0.0.1:8080", {"host": "127.0.0.1", "ports": [8080], "protocol": "tcp"}),
        ("[::1]:80/udp", {"host": "::1", "ports": [80], "protocol": "udp"}),
        ("db.internal:5432/tcp", {"host": "db.internal", "ports": [5432], "protocol": "tcp"}),
        ("*.example.com:443", {"host": "*.example.com", "ports": [443], "protocol": "tcp"}),
        ("10.0.0.0/8:443", {"host": "10.0.0.0/8", "ports": [443], "protocol": "tcp"}),
        ("[fd00::/8]:53/udp", {"host": "fd00::/8", "ports": [53], "protocol": "udp"}),
        ("db:8000-8100", {"host": "db", "ports": ["8000-8100"], "protocol": "tcp"}),
    ],
)
def test_connect_grants(value: str, rule: dict[str, Any]) -> None:
    extra = grants_to_extra([], [], [value], [], [])
    assert extra == {"connect": [rule]}
    assert load_policy("minimal", extra=extra).connect[0].protocol == rule["protocol"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "--allow-connect: 'x' is not HOST:PORT; write 127.0.0.1:8080 or [::1]:8080"),
        (":80", "--allow-connect: ':80' is not HOST:PORT"),
        ("db:", "--allow-connect: 'db:' has no port"),
        ("::1:80", "--allow-connect: '::1:80': an IPv6 address needs brackets; write [::1]:80"),
        ("[::1]80", "--allow-connect: '[::1]80' is not [IPV6]:PORT"),
        ("[127.0.0.1]:80", "is not [IPV6]:PORT"),
        ("db:http", "--allow-connect: 'db:http': the port 'http' is not a number"),
        ("db:0", "--allow-connect: 'db:0': port 0 is out of range"),
        ("db:70000", "out of range"),
        ("db:9-1", "backwards"),
        ("db:80/sctp", "the port '80/sctp' is not a number"),
        ("bad host:80", "--allow-connect: 'bad host:80': 'bad host' is not an IP address"),
        ("10.0.0.1/8:80", "host bits set; write '10.0.0.0/8'"),
    ],
)
def test_connect_grant_errors_name_the_flag_and_the_fix(value: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        grants_to_extra([], [], [value], [], [])
    assert expected in str(info.value)


def test_bind_grants() -> None:
    extra = grants_to_extra([], [], [], ["0.0.0.0:443", "[::]:0/udp"], [])
    assert extra == {
        "bind": [
            {"host": "0.0.0.0", "port": 443, "protocol": "tcp"},  # noqa: S104 - a rule, nothing binds
            {"host": "::", "port": 0, "protocol": "udp"},
        ]
    }
    assert [r.port for r in load_policy("minimal", extra=extra).bind] == [443, 0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "localhost:80",
            "--allow-bind: 'localhost:80': 'localhost' is not an IP address; a bind host is an "
            "address, write 127.0.0.1",
        ),
        ("0.0.0.0:70000", "--allow-bind: '0.0.0.0:70000'"),
        ("0.0.0.0:80-90", "--allow-bind: '0.0.0.0:80-90': the port '80-90' is not a number 0..65535"),
        ("80", "--allow-bind: '80' is not HOST:PORT"),
    ],
)
def test_bind_grant_errors_name_the_flag_and_the_fix(value: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        grants_to_extra([], [], [], [value], [])
    assert expected in str(info.value)


def test_secret_grants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    extra = grants_to_extra([], [], [], [], ["token=env:TOKEN", "key=file:keys/../key.pem"])
    assert extra == {"secrets": {"token": "env:TOKEN", "key": f"file:{os.getcwd()}/key.pem"}}
    policy = load_policy("minimal", extra=extra)
    assert policy.secrets["key"] == SecretSource(kind="file", ref=f"{os.getcwd()}/key.pem")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("token", "--secret: 'token' is not NAME=SOURCE; write --secret token=env:TOKEN"),
        ("token=TOKEN", "--secret: 'token=TOKEN': the source is not env:VAR or file:PATH"),
        ("b@d=env:X", "--secret: 'b@d' is not a valid secret name"),
        ("=env:X", "--secret: '' is not a valid secret name"),
        ("t=env:1X", "--secret: 't=env:1X': 'env:1X': '1X' is not a valid environment variable name"),
        ("t=file:", "--secret: the path is empty"),
    ],
)
def test_secret_grant_errors_name_the_flag_and_the_fix(value: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        grants_to_extra([], [], [], [], [value])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "name", ["token", "a.b-c_1", "n" * 64, "", "n" * 65, "a b", "a/b", "token\n", "\ntoken"]
)
def test_a_policy_names_a_secret_exactly_as_the_wire_can(name: str) -> None:
    """One pattern for both: a policy secret the client could never ask for is refused at load."""
    try:
        protocol.Secret(id=1, name=name)
    except ValidationError:
        on_the_wire = False
    else:
        on_the_wire = True
    try:
        Policy.model_validate({"name": "p", "secrets": {name: "env:X"}})
    except ValidationError:
        in_a_policy = False
    else:
        in_a_policy = True
    assert in_a_policy == on_the_wire


def test_a_secret_name_given_twice_is_an_error() -> None:
    with pytest.raises(PolicyError, match="the secret 'a' is given twice"):
        grants_to_extra([], [], [], [], ["a=env:A", "a=env:B"])


# --- the schema ----------------------------------------------------------------------------------


def test_the_schema_describes_a_policy_file() -> None:
    schema = policy_json_schema()
    json.dumps(schema)  # serialisable
    assert list(schema["properties"]) == [
        "extends", "description", "view", "syscalls", "limits", "env", "files", "connect", "bind", "secrets",
        "transparent", "network",
    ]  # fmt: skip
    assert "required" not in schema and schema["additionalProperties"] is False
    defs = schema["$defs"]
    assert defs["Access"]["enum"] == [a.value for a in Access]
    assert set(defs["FileRule"]["required"]) == {"path"}
    assert defs["FileRule"]["additionalProperties"] is False
    assert set(defs["ConnectRule"]["properties"]) == {"host", "ports", "protocol", "deny"}
    assert "pass" in defs["Env"]["properties"]
    assert schema["properties"]["files"]["maxItems"] == 1024
    assert schema["properties"]["secrets"]["additionalProperties"]["type"] == "string"
    assert "SecretSource" not in defs
    schema["properties"].clear()
    assert policy_json_schema()["properties"], "each call returns a fresh copy"


@pytest.mark.parametrize("name", shipped_names())
def test_shipped_policies_use_only_keys_the_schema_knows(name: str) -> None:
    schema = policy_json_schema()
    root = Path(__file__).resolve().parents[2] / "policies"
    data = tomllib.loads((root / f"{name}.toml").read_text(encoding="utf-8"))
    for key, value in data.items():
        assert key in schema["properties"], key
        prop = schema["properties"][key]
        tables = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
        if ref is None:  # [secrets]: names to strings
            assert all(isinstance(v, str) for t in tables for v in t.values()), key
            continue
        for table in tables:
            assert set(table) <= set(schema["$defs"][ref.rsplit("/", 1)[-1]]["properties"]), key


# --- [network]: egress by host name --------------------------------------------------------------


def _network(network: dict[str, Any], **more: Any) -> Policy:
    connect = more.pop("connect", ({"host": "api.test", "ports": (443,)},))
    return Policy.model_validate({"name": "t", "connect": connect, "network": network, **more})


def test_network_hosts_are_made_canonical() -> None:
    policy = _network({"hosts": {"API.Test.": "127.0.0.1", "b.test": ("::1", "::1", "10.0.0.1")}})
    assert policy.network.hosts == {"api.test": ("127.0.0.1",), "b.test": ("::1", "10.0.0.1")}


@pytest.mark.parametrize(
    ("hosts", "why"),
    [
        ({"*.test": "127.0.0.1"}, "is not a host name"),
        ({"127.0.0.1": "127.0.0.1"}, "is not a host name"),
        ({"a.test": "localhost"}, "write an IP address"),
        ({"a.test": ()}, "give 1 to 16 IP addresses"),
        ({"a.test": "fe80::1%eth0"}, "write an IP address"),
        ({"a.test": "127.0.0.1", "A.TEST": "127.0.0.2"}, "pinned twice"),
    ],
)
def test_bad_pinned_hosts_are_refused(hosts: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        _network({"hosts": hosts})


def test_the_resolver_is_on_by_default_when_a_grant_names_a_host() -> None:
    assert _network({}).egress_dns
    assert not _network({}, connect=({"host": "127.0.0.1", "ports": (80,)},)).egress_dns  # IP rules only
    assert not _network({"dns": False}).egress_dns
    assert _network({"dns": True}, connect=({"host": "10.0.0.0/8", "ports": (80,)},)).egress_dns
    assert not _network({}, transparent={"net": False}).egress_dns  # nothing could reach it
    assert _network({"proxy": True}).egress_proxy and not _network({}).egress_proxy


@pytest.mark.parametrize("key", ["dns", "proxy"])
def test_a_resolver_or_proxy_without_grants_is_an_error(key: str) -> None:
    with pytest.raises(ValidationError, match=f"network.{key}: there is no \\[\\[connect\\]\\] grant"):
        _network({key: True}, connect=())
    with pytest.raises(ValidationError, match=r"\[transparent\] net = false"):
        _network({key: True}, transparent={"net": False})


def test_an_injected_header_is_checked() -> None:
    inject = {"host": "API.test", "header": "Authorization", "source": "env:API_TOKEN", "prefix": "Bearer "}
    policy = _network({"proxy": True, "inject": (inject,)})
    assert policy.network.inject[0].host == "api.test"
    with pytest.raises(ValidationError, match="set \\[network\\] proxy = true"):
        _network({"inject": (inject,)})
    for bad, why in (
        ({"host": "*.test"}, "not an exact host name"),
        ({"header": "Host"}, "the proxy sets or drops itself"),
        ({"header": "Proxy-Authorization"}, "the proxy sets or drops itself"),
        ({"header": "Bad Header"}, "not an HTTP header name"),
        ({"prefix": "Bearer\r\n"}, "printable ASCII"),
        ({"source": "API_TOKEN"}, "not a secret source"),
    ):
        with pytest.raises(ValidationError, match=why):
            _network({"proxy": True, "inject": ({**inject, **bad},)})
    # Its variable never reaches the child.
    with pytest.raises(ValidationError, match="the child must never hold the value"):
        _network({"proxy": True, "inject": (inject,)}, env={"pass": ("API_TOKEN",)})


def test_network_loads_from_toml_and_the_proxy_flag(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        'extends = "minimal"\n[[connect]]\nhost = "api.test"\nports = [8080]\n'
        '[network]\nhosts = { "api.test" = ["127.0.0.1", "::1"] }\n'
    )
    policy = load_policy(str(path), extra={"network": {"proxy": True}})
    assert policy.network.hosts == {"api.test": ("127.0.0.1", "::1")}
    assert policy.egress_dns and policy.egress_proxy


def test_an_injected_header_name_with_a_final_newline_is_refused() -> None:
    """``$`` lets a final newline by in Python: a header name "X-Key\\n" would split the forwarded head."""
    import pydantic

    from privsep.policy.model import Inject

    Inject(host="api.test", header="X-Key", source="env:KEY")  # the same, without the newline
    with pytest.raises(pydantic.ValidationError, match="not an HTTP header name"):
        Inject(host="api.test", header="X-Key\n", source="env:KEY")
