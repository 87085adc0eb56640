"""config_loader's tests, run under least privilege with privsep's pytest plugin.

    .venv/bin/python -m pytest examples/security_tests -q

A test marked ``@pytest.mark.privsep(...)`` runs its body in a confined
child: uid 65534, no capabilities, a seccomp filter, no network, and only
the files its marker grants, through the broker. Paths in the marker are
relative to this file. A test that takes the ``sandbox`` fixture runs on
the host and drives a ``privsep.Sandbox`` made from its marker.
"""

from __future__ import annotations

from pathlib import Path

import config_loader
import pytest

from privsep import ChildError, DeniedError, Sandbox, client
from privsep.testing import assert_confined, assert_denied

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
APP = {
    "server": {"host": "127.0.0.1", "port": 8080},
    "database": {"host": "db.internal", "name": "shop"},
}

read_configs = pytest.mark.privsep(policy="python", allow_read=["configs"])


@read_configs
def test_the_test_body_runs_confined() -> None:
    assert_confined()


@read_configs
def test_loads_a_config_and_its_include_with_a_read_grant_only() -> None:
    assert config_loader.load(CONFIGS / "app.toml") == APP


@read_configs
@pytest.mark.parametrize("name", ["escape.toml", "absolute.toml"])
def test_an_include_outside_the_config_directory_is_refused(name: str) -> None:
    with pytest.raises(config_loader.ConfigError, match="outside the config directory"):
        config_loader.load(CONFIGS / name)


@read_configs
def test_an_include_cycle_is_refused() -> None:
    with pytest.raises(config_loader.ConfigError, match="include cycle"):
        config_loader.load(CONFIGS / "cycle.toml")


@read_configs
def test_the_grant_is_read_only_and_the_only_one() -> None:
    # Even a loader with a bug could do no more than read its configs:
    err = assert_denied(client.open, CONFIGS / "app.toml", "w")
    assert isinstance(err, DeniedError)
    assert "--allow-write" in str(err)  # the denial says how to allow it
    assert_denied(config_loader.load, "/etc/passwd")
    assert_denied(client.open, "/root/.ssh/id_rsa")
    assert_denied(client.connect, "example.com", 443)


@pytest.mark.privsep(policy="python")
def test_without_a_grant_the_loader_reads_nothing() -> None:
    err = assert_denied(config_loader.load, CONFIGS / "app.toml")
    assert "--allow-read" in str(err)


@pytest.mark.privsep(policy="python", allow_read=["configs"], python_path=["."])  # "." holds config_loader
def test_the_sandbox_fixture_runs_the_loader_in_a_fresh_child(sandbox: Sandbox) -> None:
    # This body runs on the host; each call is a confined child of the fixture's broker.
    assert sandbox.call("config_loader:load", str(CONFIGS / "app.toml")) == APP
    with pytest.raises(ChildError) as info:
        sandbox.call("config_loader:load", "/etc/shadow")
    assert info.value.type_name == "DeniedError"


def test_a_host_test_can_grant_a_temporary_directory(tmp_path: Path) -> None:
    # Grants that are only known at run time: build the Sandbox in the test.
    (tmp_path / "app.toml").write_text('include = ["more.toml"]\n[server]\nport = 1\n')
    (tmp_path / "more.toml").write_text('[server]\nhost = "::1"\n')
    with Sandbox("python", allow_read=[str(tmp_path)], python_path=[str(HERE)]) as sandbox:
        loaded = sandbox.call("config_loader:load", str(tmp_path / "app.toml"))
    assert loaded == {"server": {"host": "::1", "port": 1}}
