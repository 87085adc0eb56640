"""The zygote: a small process that clones sandboxes for a broker, so that the broker never forks.

Forking the broker copies its page tables (40 MB of interpreter with pydantic,
the policy and the loop) into every sandbox, and every page either side
writes afterwards is copied again: about 2,700 page faults and three quarters
of a sandbox start's CPU time, measured. The zygote is a fresh interpreter
(``python -I -S``: no site, no editable-install finder; the directories of
privsep and python-prctl are put on ``sys.path`` through ``PYTHONPATH``)
that imports :mod:`privsep.confine.inside` and nothing of the broker's: no
pydantic, no policy, about 14 MB. Its objects are frozen out of the garbage
collector's reach once imported, so that its own collections do not write
over pages its children share.

For each sandbox the broker (:class:`privsep.confine.spawn.Zygote`) sends it
the plan (:mod:`privsep.plan.wire`) and the sandbox's fds; the zygote clones
the sandbox's init (:func:`~privsep.confine.inside.start_init`), answers
with init's pid and pidfd, holds the lifeline until it reaps init, and
closes its copies of the fds. A failure to start is answered with its step
and reason (``{"step": ..., "reason": ...}``, no fd).

It trusts only the broker, whose socket is its fd given on the command line,
holds no secret, no grant and no thread, dies with the broker's process (a
pidfd of it, not a parent-death signal, which would follow the thread that
opened the Sandbox), and the sandboxes die with it (theirs).
"""

from __future__ import annotations

import array
import gc
import json
import os
import select
import socket
import sys

import prctl

import privsep
from privsep import _linux
from privsep.confine import inside
from privsep.errors import ConfinementError
from privsep.plan import wire
from privsep.plan.spawnplan import SpawnPlan

READY = b'{"ready":true}'
#: A plan and the sandbox's fds: stdio, channel, control (socket activation is the plain spawn's).
_MAX_REQUEST = 1 << 20
_MAX_FDS = 8


def interpreter_flags() -> tuple[str, ...]:
    """No site (-S), nothing of the working directory on ``sys.path`` (-P) and the broker's
    choice about bytecode (-B); the environment is :func:`environment`'s alone."""
    return ("-S", "-P") + (("-B",) if sys.dont_write_bytecode else ())


def environment() -> dict[str, str]:
    """The zygote's whole environment: never the broker's (no secret in it), only where its code is.

    privsep's own directory and python-prctl's (its only dependency here), as this
    interpreter found them: without ``site`` the zygote finds nothing else.
    """
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(privsep.__file__)))]
    roots.append(os.path.dirname(os.path.abspath(prctl.__file__)))
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(dict.fromkeys(roots))}


def _recv(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One request: the plan and its fds (close-on-exec), or None when the broker is gone."""
    space = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
    data, ancillary, flags, _ = sock.recvmsg(_MAX_REQUEST, space, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        return None  # the broker never sends these: it is gone, or not the broker
    return data, list(fds)


def _start(sock: socket.socket, data: bytes, fds: list[int]) -> tuple[int, int, int] | None:
    """Clone the sandbox's init; (its pidfd, its pid, the lifeline), or None when it could not start."""
    try:
        plan = wire.decode(SpawnPlan, data)
        if len(fds) != 5 or plan.listen:
            raise ConfinementError("zygote", f"a start carries 5 fds and no listening socket, not {len(fds)}")
        pid, lifeline = inside.start_init(plan, fds, announce=False)  # its pidfd goes with the answer
        pidfd = os.pidfd_open(pid)
    except (ConfinementError, ValueError, OSError) as exc:
        step, reason = (exc.step, exc.reason) if isinstance(exc, ConfinementError) else ("zygote", str(exc))
        inside.send(sock, json.dumps({"step": step, "reason": reason}).encode())
        return None
    finally:
        for fd in fds:
            os.close(fd)
    inside.send(sock, json.dumps({"pid": pid}).encode(), [pidfd])
    return pidfd, pid, lifeline


def _reap(pidfd: int, children: dict[int, tuple[int, int]]) -> None:
    pid, lifeline = children.pop(pidfd)
    os.waitpid(pid, 0)
    os.close(lifeline)
    os.close(pidfd)


def serve(fd: int, broker_pid: int) -> int:  # pragma: no cover - runs in the zygote process
    """The zygote's life: start a sandbox per request, reap them, until the broker goes."""
    prctl.set_name("privsep-zygote")
    broker = inside.broker_pidfd(broker_pid)
    if broker is None:
        return 1
    # Once here, for every init it clones: signals as a sandbox starts with them, the one
    # file the sandbox's processes would read (cap_last_cap), and the objects of every
    # import out of the collector's reach (collections here dirty no page a child shares).
    inside.reset_process_state()
    gc.enable()
    _linux.cap_last_cap()
    gc.freeze()
    sock = socket.socket(fileno=fd)
    inside.send(sock, READY)
    children: dict[int, tuple[int, int]] = {}  # init's pidfd: (its pid, the lifeline we hold)
    events = select.epoll()
    events.register(fd, select.EPOLLIN)
    events.register(broker, select.EPOLLIN)
    while True:
        for one, _ in events.poll():
            if one == broker:
                return 0  # the broker has exited (a copy of its socket may live on in a fork)
            if one != fd:
                events.unregister(one)
                _reap(one, children)
                continue
            request = _recv(sock)
            if request is None:
                return 0
            started = _start(sock, *request)
            if started is not None:
                children[started[0]] = started[1:]
                events.register(started[0], select.EPOLLIN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2])))
