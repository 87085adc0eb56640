"""``privsep policy check`` and ``privsep policy show``: a policy as ``privsep run`` will see it.

``check`` does, for each policy, everything ``privsep run`` does before it
starts a child, and reports every problem at once instead of the first:
loading (TOML, keys, types, ``extends``, variables), expanding the syscall
groups and resolving every syscall name against libseccomp (an unknown name
is an error, never ignored), planning the view on this machine (paths that
do not exist), pinning the ``[[files]]`` grants as the broker does, and
compiling the very seccomp filter ``run`` would load
(:func:`privsep.plan.spawnplan.filter_spec`, from the same grants). Each
problem names the file that wrote the entry and the field
(``syscalls.allow[2]``), as an editor needs it. Warnings are
things that load but will not work yet on this machine: a grant or a
secret's file that does not exist, a low port a non-root broker cannot bind.

This module is a face over policy, plan and broker (like ``cli``), not
part of the pure ``policy`` package: checking means touching libseccomp and
the file system.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from privsep import _stdout
from privsep.broker.pins import pin
from privsep.errors import ConfinementError, PolicyError
from privsep.plan.filter import compile_filter, syscall_number
from privsep.plan.spawnplan import SANDBOX_ID, filter_spec
from privsep.plan.view import GrantsPlan, plan_grants, plan_view
from privsep.policy.load import load_policy
from privsep.policy.model import Policy, View
from privsep.policy.show import Link, chain, render_json, render_toml
from privsep.policy.syscalls import GROUPS, expand

__all__ = ["CheckResult", "Problem", "check_command", "check_policy", "format_result", "show_command"]

_INVALID = re.compile(r"^invalid policy (?P<origin>.+?)(?: with the command-line grants)?:$")


@dataclass(frozen=True)
class Problem:
    """One finding: the file that wrote the entry, the field in it, what is wrong and the fix."""

    origin: str
    field: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.origin, self.field, self.message) if part)


@dataclass
class CheckResult:
    spec: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# --- where an entry was written ------------------------------------------------------------------


def _where(links: Sequence[Link], table: str, key: str, value: object) -> tuple[str, str]:
    """(origin, field) of the first file of the chain, ancestors first, listing ``value``."""
    for link in reversed(links):
        section = link.data.get(table)
        items = section.get(key) if isinstance(section, dict) else None
        if isinstance(items, list) and value in items:
            return link.origin, f"{table}.{key}[{items.index(value)}]"
    return (links[0].origin if links else ""), f"{table}.{key}"


def _where_rule(links: Sequence[Link], kind: str, match: dict[str, object]) -> tuple[str, str]:
    """(origin, field) of the ``[[kind]]`` table whose keys include ``match``."""
    for link in reversed(links):
        rules = link.data.get(kind)
        if not isinstance(rules, list):
            continue
        for index, rule in enumerate(rules):
            if isinstance(rule, dict) and all(rule.get(k) == v for k, v in match.items()):
                return link.origin, f"{kind}[{index}]"
    return (links[0].origin if links else ""), kind


def _where_secret(links: Sequence[Link], name: str) -> tuple[str, str]:
    for link in links:  # the child's value wins: the first file, itself first, that sets it
        secrets = link.data.get("secrets")
        if isinstance(secrets, dict) and name in secrets:
            return link.origin, f"secrets.{name}"
    return (links[0].origin if links else ""), f"secrets.{name}"


# --- the checks ----------------------------------------------------------------------------------


def _load_problems(spec: str, exc: PolicyError) -> list[Problem]:
    """A load error, split into one problem per field when the loader listed several."""
    first, *rest = str(exc).split("\n")
    match = _INVALID.match(first)
    if match is None or not rest:
        return [Problem(spec if spec not in str(exc) else "", "", str(exc))]
    problems = []
    for line in rest:
        where, _, message = line.strip().partition(": ")
        problems.append(Problem(match["origin"], where, message))
    return problems


def _known_syscalls() -> list[str]:
    return sorted(frozenset().union(*GROUPS.values()))


def _syscalls(policy: Policy, links: Sequence[Link], result: CheckResult) -> bool:
    """Each entry of ``[syscalls] allow`` on its own; False if any is wrong (the filter is then
    not compiled: it would only repeat the error)."""
    before = len(result.errors)
    for entry in policy.syscalls.allow:
        origin, where = _where(links, "syscalls", "allow", entry)
        try:
            expand([entry])
            known = entry.startswith("@") or syscall_number(entry) is not None
        except (PolicyError, ConfinementError) as exc:
            result.errors.append(Problem(origin, where, str(exc)))
            continue
        if not known:
            close = difflib.get_close_matches(entry, _known_syscalls(), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            result.errors.append(
                Problem(
                    origin,
                    where,
                    f"unknown syscall {entry!r}: not a system call on x86_64 for libseccomp and "
                    f"privsep{hint} (groups and their syscalls: `privsep policy show minimal`)",
                )
            )
    return len(result.errors) == before


def _filter(policy: Policy, links: Sequence[Link], result: CheckResult, grants: GrantsPlan | None) -> None:
    """Compile the filter ``privsep run`` loads for this policy here (as a plain run, not learn).

    Without ``grants`` (the view or a grant did not plan, and ``run`` would stop there) the
    broker is taken to serve a grant: of the two filters a policy can have, the longer one.
    """
    broker_served = True if grants is None else bool(grants.broker_served)
    try:
        compile_filter(filter_spec(policy, broker_served=broker_served))
    except (PolicyError, ConfinementError) as exc:
        result.errors.append(Problem(links[0].origin if links else result.spec, "syscalls", str(exc)))


def _view(policy: Policy, links: Sequence[Link], result: CheckResult) -> None:
    before = len(result.errors)
    for key, paths in (("read", policy.view.read), ("read_if_exists", policy.view.read_if_exists)):
        for path in paths:
            try:
                plan_view(View.model_validate({key: (path,)}))
            except PolicyError as exc:
                origin, where = _where(links, "view", key, path)
                result.errors.append(Problem(origin, where, str(exc)))
    if len(result.errors) == before:
        try:
            plan_view(policy.view)
        except PolicyError as exc:
            result.errors.append(Problem(links[0].origin if links else result.spec, "view", str(exc)))


def _files(policy: Policy, links: Sequence[Link], result: CheckResult) -> GrantsPlan | None:
    """The grants one by one, then planned together as ``run`` plans them (None if they do not)."""
    for index, rule in enumerate(policy.files):
        if rule.deny:
            continue
        origin, where = _where_rule(links, "files", {"path": rule.path})
        try:
            held = pin(index, rule.path)
        except PolicyError as exc:
            message = str(exc).removeprefix(f"files[{index}] ({rule.path}): ")
            result.errors.append(Problem(origin, where, f"{rule.path}: {message}"))
            continue
        os.close(held.fd)
        if not os.path.lexists(rule.path):
            result.warnings.append(
                Problem(
                    origin,
                    where,
                    f"{rule.path} does not exist on this machine: the broker pins grants when "
                    "`privsep run` starts, so the path itself may then be created (as a file), but nothing "
                    "beneath it can be reached; if it is a directory, create it first",
                )
            )

    # How the grants will be served here: nested grants that cannot mean what they say,
    # deny rules the kernel cannot mask (only once the view itself plans: no error twice).
    if result.errors:
        return None
    try:
        return plan_grants(policy, root_broker=os.geteuid() == 0, sandbox_id=SANDBOX_ID)
    except PolicyError as exc:
        result.errors.append(Problem(links[0].origin if links else result.spec, "files", str(exc)))
        return None


def _secrets(policy: Policy, links: Sequence[Link], result: CheckResult) -> None:
    for name, source in policy.secrets.items():
        origin, where = _where_secret(links, name)
        if source.kind == "file" and not os.path.exists(source.ref):
            result.warnings.append(
                Problem(
                    origin,
                    where,
                    f"{source.ref} does not exist on this machine; the child's client.secret({name!r}) "
                    "fails until it does (the broker reads it on each request)",
                )
            )
        elif source.kind == "env" and source.ref not in os.environ:
            result.warnings.append(
                Problem(
                    origin,
                    where,
                    f"${source.ref} is not set here; the child's client.secret({name!r}) fails unless "
                    "`privsep run` has it in its environment",
                )
            )


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def _binds(policy: Policy, links: Sequence[Link], result: CheckResult) -> None:
    if os.geteuid() == 0:
        return
    start = _unprivileged_port_start()
    for rule in policy.bind:
        if 0 < rule.port < start:
            origin, where = _where_rule(links, "bind", {"port": rule.port})
            result.warnings.append(
                Problem(
                    origin,
                    where,
                    f"port {rule.port} is below {start} (net.ipv4.ip_unprivileged_port_start): only a broker "
                    "running as root (or with CAP_NET_BIND_SERVICE) can bind it; you are not root",
                )
            )


def check_policy(spec: str) -> CheckResult:
    """Every problem that would stop ``privsep run --policy SPEC`` here, and warnings."""
    result = CheckResult(spec)
    try:
        policy = load_policy(spec)
    except PolicyError as exc:
        result.errors += _load_problems(spec, exc)
        return result
    try:
        links = chain(spec)
    except (PolicyError, OSError, ValueError):  # pragma: no cover - it just loaded
        links = []
    names_ok = _syscalls(policy, links, result)
    _view(policy, links, result)
    grants = _files(policy, links, result)
    if names_ok:
        _filter(policy, links, result, grants)
    _secrets(policy, links, result)
    _binds(policy, links, result)
    return result


def format_result(result: CheckResult) -> str:
    """``SPEC: ok`` or ``SPEC: N errors``, then one indented line per problem."""
    count = len(result.errors)
    if result.ok:
        head = f"{result.spec}: ok"
        if result.warnings:
            head += f" ({len(result.warnings)} warning{'s' if len(result.warnings) > 1 else ''})"
    else:
        head = f"{result.spec}: {count} error{'s' if count > 1 else ''}"
    lines = [head]
    lines += [f"  error: {p}" for p in result.errors]
    lines += [f"  warning: {p}" for p in result.warnings]
    return "\n".join(lines) + "\n"


def check_command(specs: Sequence[str]) -> int:
    """``privsep policy check SPEC...``: 0 if every policy is ok (warnings allowed), else 1."""
    status = 0
    for spec in specs:
        result = check_policy(spec)
        _stdout.write(format_result(result))
        status |= not result.ok
    return status


def show_command(spec: str, *, as_json: bool) -> int:
    """``privsep policy show SPEC [--json]``: the resolved policy.

    1 when ``privsep run`` would refuse it here (the problems go to stderr,
    after the policy if it loads at all), else 0.
    """
    result = check_policy(spec)
    status = 0 if result.ok else 1
    try:
        policy = load_policy(spec)
        links = chain(spec)
        text = render_json(policy, links) if as_json else render_toml(policy, links)
    except PolicyError:
        text = ""  # the check reported it
    _stdout.write(text)
    if not result.ok:
        sys.stderr.write(
            f"privsep: {spec}: `privsep run` would refuse this policy here:\n"
            + "".join(f"  {p}\n" for p in result.errors)
        )
    return status
