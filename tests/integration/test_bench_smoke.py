"""``python -m bench --quick`` runs end to end and writes every section.

A smoke test: it checks that the benchmark measures, never what it
measured (latency is a benchmark matter; a missed target is reported in the
table, not failed here). A peer that is not installed is a skip note.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.slow


def _is_stats(value: Any) -> bool:
    return (
        isinstance(value, dict) and {"median", "min", "max"} <= value.keys() and value["min"] <= value["max"]
    )


def _measured_or_skipped(value: Any) -> bool:
    return _is_stats(value) or (isinstance(value, dict) and isinstance(value.get("skipped"), str))


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark's broker runs as root (as in CI)")
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [str(PYTHON), "-m", "bench", "--quick", "--quiet", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["meta"]["quick"] is True
    assert "| target | issue |" in proc.stdout  # the table went to stdout too

    for mode in ("pinned", "unpinned"):
        rt = res["roundtrip"][mode]
        for key in ("brokered_open", "brokered_ping", "raw_open", "raw_ping", "direct_open"):
            assert _is_stats(rt[key]["p50_us"]) and _is_stats(rt[key]["p99_us"]), (mode, key)
        for key in ("brokered_open", "brokered_ping", "raw_open", "raw_ping"):
            assert _is_stats(rt[key]["cpu_us"]) and _is_stats(rt[key]["broker_cpu_us"]), (mode, key)
        assert _is_stats(rt["open_vs_raw_p50"])

    assert set(res["throughput"]["children"]) == {"1", "4", "16"}
    assert all(_is_stats(v) and v["min"] > 0 for v in res["throughput"]["children"].values())

    egress = res["egress"]
    for key in ("resolve", "localhost", "direct", "proxied", "resolve_vs_localhost", "proxied_vs_direct"):
        assert _is_stats(egress[key]), key
    assert "through privsep's proxy vs direct" in proc.stdout

    spawn = res["spawn"]
    for key in (
        "sandbox_run",
        "monitor_start_wait",
        "zygote_start_wait",
        "direct_start_wait",
        "sandbox_call",
        "privsep_run",
        "pydantic_floor",
        "privsep_run_cold",
        "imports_warm",
        "imports_cold",
        "imports_warm_vs_cold",
    ):
        assert _is_stats(spawn[key]), key
    assert spawn["sandbox_run_cpu_ms"]["broker"] > 0  # what each start costs the machine
    for how in ("monitor", "zygote", "direct"):  # each way of starting, step by step
        assert all(_is_stats(v) for v in spawn[f"{how}_start_wait_phases_ms"].values()), how
    for peer in ("bwrap", "firejail"):
        assert _measured_or_skipped(spawn[peer]), peer
    assert _is_stats(spawn["forkserver_call"])  # the forkserver start method is measured

    cgroups = res["cgroups"]  # a cgroup per sandbox against none, within each round
    if "skipped" not in cgroups:
        for key in (
            "spawn_with_cgroup_ms",
            "spawn_without_cgroup_ms",
            "with_vs_without",
            "make_and_remove_us",
        ):
            assert _is_stats(cgroups[key]), key

    seccomp = res["seccomp"]
    for key in ("getppid_ratio", "stat_ratio", "getppid_one_rule_ratio", "stat_one_rule_ratio"):
        assert _is_stats(seccomp[key]), key

    kernel_open = res["kernel_open"]
    for prog in ("c", "python"):
        if "skipped" in kernel_open[prog]:  # no C compiler
            assert prog == "c" and isinstance(kernel_open[prog]["skipped"], str)
            continue
        m = kernel_open[prog]
        for key in ("privsep_kernel", "host", "privsep_broker", "privsep_broker_unpinned"):
            assert _is_stats(m[key]["p50_us"]) and _is_stats(m[key]["p99_us"]), (prog, key)
        assert _measured_or_skipped(m["bwrap"] if "skipped" in m["bwrap"] else m["bwrap"]["p50_us"])
        for key in ("kernel_vs_host_p50", "broker_vs_host_p50", "broker_vs_kernel_p50"):
            assert _is_stats(m[key]), (prog, key)

    connect = res["connect"]
    if "skipped" in connect:  # no C compiler
        assert isinstance(connect["skipped"], str)
    else:
        for key in ("host", "privsep_broker", "privsep_broker_unpinned"):
            assert _is_stats(connect[key]["p50_us"]) and _is_stats(connect[key]["p99_us"]), key
        assert _is_stats(connect["broker_vs_host_p50"])

    cli = res["cli"]
    for key in ("privsep_run", "privsep_run_true", "bare", "vs_bare"):
        assert _is_stats(cli[key]), key
    assert _measured_or_skipped(cli["bwrap"])

    isolation = res["isolation"]  # what the tests' order-of-events assertions leave to the bench
    assert _is_stats(isolation["alone"]["p50_us"])
    for load in ("flood", "hung_connect", "listing"):
        assert _is_stats(isolation[load]["p50_us"]) and _is_stats(isolation[load]["p50_vs_alone"]), load
    assert _is_stats(isolation["concurrent_runs"]["three_vs_one"])
    marked = res["marked"]  # a file of marked tests against the same file unmarked, per test
    for key in ("marked", "unmarked", "per_test"):
        assert _is_stats(marked[key]), key
    assert _measured_or_skipped(marked["bwrap"])

    scale = res["scale"]
    assert [lvl["children"] for lvl in scale["levels"]] == [100]
    level = scale["levels"][0]
    assert level["broker_rss_kb"] > 0 and level["open"]["p50_us"] > 0

    names = [t["target"] for t in res["targets"]]
    assert len(names) == 17  # issues 7, 12, 14 and 16
    assert "client.open p50 <= 3x raw floor (pinned)" in names
    assert "privsep run -- /bin/true <= 10x bwrap (warm plan cache)" in names
    assert "Sandbox.run(['/bin/true']) <= 1.5x bwrap" in names
    assert "forkserver Sandbox.call <= 2.5x bwrap /bin/true" in names
    assert all(t["met"] in (True, False, None) for t in res["targets"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark's broker runs as root (as in CI)")
def test_only_runs_the_sections_named(tmp_path: Path) -> None:
    """``--only`` runs those sections and no other, and their rows and targets alone make the table."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            str(PYTHON),
            "-m",
            "bench",
            "--quick",
            "--quiet",
            "--rounds",
            "1",
            "--only",
            "seccomp",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "seccomp", "targets", "table"}
    assert res["meta"]["only"] == ["seccomp"]
    assert [t["target"] for t in res["targets"]] == ["seccomp getppid loop <= 1.05x unconfined"]
    lines = proc.stdout.splitlines()
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| ") and " | issue |" not in line]
    assert rows == ["| section", *["| seccomp"] * 4, "| seccomp getppid loop <= 1.05x unconfined"]

    refused = subprocess.run(
        [str(PYTHON), "-m", "bench", "--only", "nosuch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "no section named nosuch" in refused.stderr
