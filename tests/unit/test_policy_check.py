"""``privsep policy check`` compiles the filter ``privsep run`` loads, not a look-alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from privsep import check
from privsep.plan.filter import FilterSpec, compile_filter
from privsep.plan.spawnplan import make_plan
from privsep.policy.load import load_policy


def _policy_file(tmp_path: Path, *, broker_served: bool) -> str:
    log = tmp_path / "app.log"
    log.touch()
    # An append-only grant is one the kernel cannot serve: the broker does, and the filter
    # then sends the child's opens to it. A read grant is bound into the view instead.
    access = '["append"]' if broker_served else '["read"]'
    path = tmp_path / "policy.toml"
    path.write_text(f'extends = "python"\n[[files]]\npath = "{log}"\naccess = {access}\n')
    return str(path)


@pytest.mark.parametrize("broker_served", [False, True])
def test_check_compiles_the_bytes_run_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_served: bool
) -> None:
    spec = _policy_file(tmp_path, broker_served=broker_served)
    compiled: list[bytes] = []

    def recording(filter_spec: FilterSpec) -> bytes:
        compiled.append(compile_filter(filter_spec))
        return compiled[-1]

    monkeypatch.setattr(check, "compile_filter", recording)
    result = check.check_policy(spec)
    assert result.ok, result.errors
    assert compiled == [make_plan(load_policy(spec), ["/bin/true"]).seccomp_bpf]


def test_without_planned_grants_check_still_compiles_the_longer_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _policy_file(tmp_path, broker_served=False)
    (tmp_path / "policy.toml").write_text(
        (tmp_path / "policy.toml").read_text() + f'[view]\nread = ["{tmp_path}/nowhere"]\n'
    )
    specs: list[FilterSpec] = []

    def recording(filter_spec: FilterSpec) -> bytes:
        specs.append(filter_spec)
        return compile_filter(filter_spec)

    monkeypatch.setattr(check, "compile_filter", recording)
    result = check.check_policy(spec)
    assert [p.field for p in result.errors] == ["view.read[0]"]
    assert [s.transparent_files for s in specs] == [True]
