"""A plugin host: discovers plugins, runs each confined, reports what each did and was refused.

    .venv/bin/python examples/plugin_host/host.py [--plugins DIR]

Every module ``NAME.py`` in the plugins directory is a plugin with a function
``run(input_dir, output_dir)``. The host runs each with ``Sandbox.call`` under
the shipped ``plugin`` policy, in a fresh confined child of its own broker:
it may read the shared input directory and write its own output directory,
both through the broker (``privsep.client``), and nothing else: no network,
no other file, 32 processes and 512 MB of memory at most, one CPU's worth.

The host trusts nothing a plugin says. What a plugin was refused comes from
the broker's audit log, not from the plugin; what it returns or writes is
shown escaped (a plugin could print terminal escape sequences). A plugin
that fails or misbehaves is reported, and the host goes on to the next.

Exit status 0 when each plugin of this demo ended as expected: the
well-behaved ones did their work, the hostile one got nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privsep import ChildError, Sandbox

HERE = Path(__file__).resolve().parent
INPUT = {
    "fox.txt": "The quick brown fox jumps over the lazy dog\n",
    "lorem.txt": "Lorem ipsum dolor sit amet\n",
}
PLUGIN_TIMEOUT = 20.0  # seconds; the policy's own is 300, far too patient for a demo


@dataclass
class Report:
    name: str
    value: Any = None
    error: ChildError | None = None
    refused: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


def discover(plugins: Path) -> list[str]:
    """Module names of the plugins, in a stable order."""
    return sorted(
        p.stem for p in plugins.glob("*.py") if p.stem.isidentifier() and not p.stem.startswith("_")
    )


def run_plugin(name: str, plugins: Path, input_dir: Path, work: Path) -> Report:
    """Run one plugin in its own Sandbox: its own grants, its own audit log."""
    output_dir = work / "out" / name
    output_dir.mkdir(parents=True)
    audit = work / f"{name}.audit.jsonl"
    report = Report(name)
    with Sandbox(
        "plugin",
        allow_read=[str(input_dir)],
        allow_write=[str(output_dir)],
        python_path=[str(plugins)],
        timeout=PLUGIN_TIMEOUT,
        audit_log=str(audit),
    ) as sandbox:
        try:
            report.value = sandbox.call(f"{name}:run", str(input_dir), str(output_dir))
        except ChildError as exc:
            report.error = exc
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        if record["decision"] == "deny":
            report.refused.append(record)
    for path in sorted(output_dir.iterdir()):
        report.outputs[path.name] = path.read_text(errors="replace")
    return report


def _safe(text: object, limit: int = 300) -> str:
    """Untrusted text, one line, control characters escaped, cut to ``limit``."""
    shown = str(text).encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "..."


def print_report(report: Report) -> None:
    print(f"== plugin {report.name}")
    if report.error is None:
        print(f"   returned: {_safe(json.dumps(report.value))}")
    else:
        print(f"   failed: {_safe(report.error.type_name)}: {_safe(report.error.message)}")
    print(f"   refused by the broker: {len(report.refused)}")
    for record in report.refused:
        why = record.get("message") or record.get("rule") or ""
        print(f"     {record['op']} {_safe(record['target'])}: {_safe(why)}")
    for name, text in report.outputs.items():
        print(f"   wrote {_safe(name)}:")
        for line in text.splitlines()[:20]:
            print(f"     | {_safe(line)}")


# --- what this demo expects of its plugins --------------------------------------------------------------


def _expect_wordcount(report: Report) -> list[str]:
    counts = {name: len(text.split()) for name, text in INPUT.items()}
    problems = []
    if report.error is not None or report.value != {"files": len(INPUT), "words": sum(counts.values())}:
        problems.append("did not return its counts")
    if json.loads(report.outputs.get("wordcount.json", "null")) != counts:
        problems.append("did not write wordcount.json")
    return problems


def _expect_shout(report: Report) -> list[str]:
    wanted = {name: text.upper() for name, text in INPUT.items()}
    if report.error is not None or report.outputs != wanted:
        return ["did not write its upper-case copies"]
    return []


def _expect_hostile(report: Report) -> list[str]:
    problems = []
    if report.error is None or report.error.type_name != "DeniedError":
        problems.append("its exfiltration was not refused with a DeniedError")
    refused = {(r["op"], r["target"]) for r in report.refused}
    for wanted in [
        ("open", "/root/.ssh/id_rsa"),
        ("open", "/etc/shadow"),
        ("connect", "203.0.113.7:443/tcp"),
    ]:
        if wanted not in refused:
            problems.append(f"the broker did not refuse {wanted[0]} {wanted[1]}")
    loot = report.outputs.get("loot.txt", "")
    if "GOT" in loot or "CONNECTED" in loot:
        problems.append("it got something: " + _safe(loot))
    if "fork bomb: stopped" not in loot:
        problems.append("its fork bomb was not stopped by the process limit")
    if "socket AF_INET: " not in loot:
        problems.append("it did not get to try a socket")
    return problems


EXPECTED = {"wordcount": _expect_wordcount, "shout": _expect_shout, "hostile": _expect_hostile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugins", type=Path, default=HERE / "plugins", help="the plugins directory")
    args = parser.parse_args(argv)
    plugins = args.plugins.resolve()
    names = discover(plugins)
    print(f"found {len(names)} plugins in {plugins}: {', '.join(names)}")

    # The broker (this process) opens the directories for the plugins; a
    # directory of our own is enough. Nothing here needs to be readable by
    # the sandbox's uid.
    work = Path(tempfile.mkdtemp(prefix="plugin-host-"))
    try:
        input_dir = work / "in"
        input_dir.mkdir()
        for name, text in INPUT.items():
            (input_dir / name).write_text(text)
        problems = []
        for name in names:
            report = run_plugin(name, plugins, input_dir, work)
            print_report(report)
            check = EXPECTED.get(name)
            for problem in check(report) if check else []:
                problems.append(f"{name}: {problem}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    missing = sorted(set(EXPECTED) - set(names))
    problems += [f"{name}: not found" for name in missing]
    if problems:
        print("UNEXPECTED:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"all {len(names)} plugins ran; the hostile one was contained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
