"""``privsep learn``: run a command permissively and write the smallest policy that lets it run.

Firefox's "would have denied" mode, taken one step further. The command runs
fully confined (namespaces, view, identity, Landlock, limits). Only two
things are permissive:

- A syscall outside the base policy's allowlist is recorded and allowed
  (see broker/notify.py for why continuing is sound here), except the
  dangerous set, which stays denied.
- A brokered request the base policy denies is turned into the narrowest
  rule that allows it, then performed under the extended policy: an exact
  path with exactly the access used, exactly that host and port. A secret
  cannot be learned (there is no source to invent); its name is noted.

The policy written ``extends`` the base, so it reads as "the base, plus
what this command needed". Unmodified programs are learned from too: while
learning, every ``open`` goes to the broker (transparent brokering), so an
open outside the view is learned like a client request, and a directory
opened for listing becomes a listing grant. The rules are written as grants
the kernel serves (:func:`kernel_grants`). ``stat`` and other calls that
never reach the broker are not learned.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Iterable

from pydantic import ValidationError

from privsep import protocol
from privsep.broker.answers import Answer, Refusal
from privsep.broker.services import Services
from privsep.errors import PolicyError
from privsep.plan.importpath import check_grants
from privsep.plan.ownpaths import check_writes
from privsep.plan.spawnplan import own_paths
from privsep.policy.decide import CREATES_IF_MISSING, OPEN_NEEDS, Access, check_path
from privsep.policy.model import BindRule, ConnectRule, FileRule, Policy


class LearningServices(Services):
    """Services that grow the policy instead of denying; one request at a time."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self._lock = threading.Lock()  # slow ops run on worker threads
        self.secrets_asked: set[str] = set()

    def handle(self, request: protocol.Request) -> Answer:
        with self._lock:
            try:
                return super().handle(request)
            except Refusal as refusal:
                if refusal.code is not protocol.ErrorCode.DENIED:
                    raise
                if isinstance(request, protocol.Secret):
                    self.secrets_asked.add(request.name)
                    raise
                try:
                    grown = self._grow(request)
                except (ValidationError, PolicyError):
                    grown = None  # the child's input makes no valid rule: nothing to learn
                if grown is None:
                    raise
                old = self.files
                self._load(grown)  # re-pins the grants
                old.close()
            return super().handle(request)

    def _grow(self, request: protocol.Request) -> Policy | None:  # noqa: PLR0911 - one return per op
        """The policy plus the narrowest rule for ``request``, or None when none can be learned."""
        policy = self.policy
        match request:
            case protocol.Open():
                if check_path(request.path) is not None:
                    return None  # checked before the host's file system is asked anything
                needs = list(OPEN_NEEDS[request.mode])
                exists = os.path.lexists(request.path)
                if request.mode in CREATES_IF_MISSING and not exists:
                    needs.append(Access.CREATE)
                if not exists and Access.CREATE not in needs:
                    return None  # a probe for a file the host lacks: a rule would only be noise
                return _with_files(policy, [(request.path, needs)])
            case protocol.Stat():
                return _with_files(policy, [(request.path, [Access.READ])])
            case protocol.Listdir():
                return _with_files(policy, [(request.path, [Access.LIST])])
            case protocol.Mkdir() | protocol.Unlink():
                return _with_files(policy, [(request.path, [Access.CREATE])])
            case protocol.Rename():
                return _with_files(policy, [(request.src, [Access.CREATE]), (request.dst, [Access.CREATE])])
            case protocol.ConnectUnix():
                return _with_files(policy, [(request.path, [Access.CONNECT])])
            case protocol.Connect():
                rule = ConnectRule(host=request.host, ports=(request.port,), protocol=request.type)
                return policy.model_copy(update={"connect": (*policy.connect, rule)})
            case protocol.Bind():
                if _ip(request.host) is None:
                    return None
                bind = BindRule(host=request.host, port=request.port, protocol=request.type)
                return policy.model_copy(update={"bind": (*policy.bind, bind)})
        return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _with_files(policy: Policy, wanted: Iterable[tuple[str, list[Access]]]) -> Policy | None:
    rules = list(policy.files)
    for path, needs in wanted:
        if check_path(path) is not None:
            return None  # not a path a rule can name
        try:
            check_grants([(path, [a.value for a in needs])])
            check_writes([(path, [a.value for a in needs])], own_paths(policy))
        except PolicyError:
            # where the broker runs Python from, or a file it opens by name: never learned
            # (plan/importpath.py, plan/ownpaths.py)
            return None
        for i, rule in enumerate(rules):
            if rule.path == path and not rule.recursive and not rule.deny:
                merged = tuple(sorted(set(rule.access) | set(needs)))
                rules[i] = rule.model_copy(update={"access": merged})
                break
        else:
            rules.append(FileRule(path=path, access=tuple(sorted(set(needs))), recursive=False))
    return policy.model_copy(update={"files": tuple(rules)})


_ACCESS_ORDER = [a.value for a in Access]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def kernel_grants(rules: Iterable[FileRule]) -> list[tuple[str, set[str], bool]]:
    """The learned rules as grants the kernel can serve: (path, access words, recursive).

    A file read or written in place stays an exact grant of that file. A
    directory the command listed, or one it created entries in, becomes a
    grant of the whole directory (the kernel binds directories; a file that
    does not exist yet cannot be bound, and the next run's temporary names
    differ), with the files learned beneath it folded in.
    """
    dirs: dict[str, set[str]] = {}
    files: dict[str, set[str]] = {}
    for rule in rules:
        words = {a.value for a in rule.access}
        if Access.LIST in rule.access or os.path.isdir(rule.path):
            dirs.setdefault(rule.path, set()).update(words | {"read", "list"})
        elif Access.CREATE in rule.access:
            dirs.setdefault(os.path.dirname(rule.path), set()).update(words | {"read", "list"})
        else:
            files.setdefault(rule.path, set()).update(words)
    out: list[tuple[str, set[str], bool]] = []
    for path, words in files.items():
        enclosing = [d for d in dirs if _under(path, d)]
        if enclosing:
            dirs[max(enclosing, key=len)].update(words)
        else:
            out.append((path, words, False))
    out += [(path, words, True) for path, words in dirs.items()]
    return sorted(out)


def render(
    base: str, base_policy: Policy, learned: Policy, syscalls: Iterable[str], secrets: Iterable[str]
) -> str:
    """The new policy as TOML: ``extends`` the base, with only what was learned."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"# Learned by `privsep learn` over the base policy {base!r}: what the command needed",
        "# beyond it, each rule as narrow as the use that asked for it. Review before use.",
        f"extends = {q(base)}",
    ]
    new_syscalls = sorted(set(syscalls))
    if new_syscalls:
        lines += ["", "[syscalls]", f"allow = [{', '.join(q(s) for s in new_syscalls)}]"]
    for path, words, recursive in kernel_grants(learned.files[len(base_policy.files) :]):
        access = ", ".join(q(w) for w in sorted(words, key=_ACCESS_ORDER.index))
        lines += ["", "[[files]]", f"path = {q(path)}", f"access = [{access}]"]
        lines.append(f"recursive = {'true' if recursive else 'false'}")
    for connect in learned.connect[len(base_policy.connect) :]:
        ports = ", ".join(str(p) for p in connect.ports)
        lines += ["", "[[connect]]", f"host = {q(connect.host)}", f"ports = [{ports}]"]
        lines.append(f"protocol = {q(connect.protocol)}")
    for bind in learned.bind[len(base_policy.bind) :]:
        lines += [
            "",
            "[[bind]]",
            f"host = {q(bind.host)}",
            f"port = {bind.port}",
            f"protocol = {q(bind.protocol)}",
        ]
    asked = sorted(set(secrets))
    if asked:
        lines += ["", "# The command asked for these secrets; give each a source, e.g.:"]
        lines += [f'# {name} = "env:VARIABLE"' for name in asked]
    return "\n".join(lines) + "\n"
