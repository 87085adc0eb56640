"""Per-process resource limits (setrlimit), so one child cannot exhaust the machine for everyone else.

The sandbox as a whole (memory, processes, CPU) is held by its cgroup
(``privsep.cgroups``). RLIMIT_NPROC is unlimited here (as far as the hard
limit allows): the kernel counts it per uid, shared by every sandbox of a
root broker, so it is set to ``processes`` only for a sandbox without a
cgroup (``spawn.in_cgroup``).
"""

from __future__ import annotations

import resource

from privsep.errors import ConfinementError
from privsep.policy.model import Limits

_MB = 1 << 20


def rlimits(limits: Limits) -> dict[int, int]:
    """The (soft = hard) limits for a policy; computed in the broker, applied in the child.

    RLIMIT_AS stays with the cgroup's memory limit: it turns one huge
    allocation into an error the program can handle, where the cgroup would
    kill the whole sandbox.
    """
    return {
        resource.RLIMIT_NOFILE: limits.open_files,
        resource.RLIMIT_NPROC: resource.RLIM_INFINITY,
        resource.RLIMIT_AS: limits.address_space_mb * _MB,
        resource.RLIMIT_FSIZE: limits.file_size_mb * _MB,
        resource.RLIMIT_CPU: limits.cpu_seconds,
        resource.RLIMIT_CORE: 0,
        # Not policy knobs, but never inherited from the broker either: a broker
        # allowed real-time scheduling or locked memory must not pass it on.
        resource.RLIMIT_MEMLOCK: 64 * 1024,
        resource.RLIMIT_RTPRIO: 0,
        resource.RLIMIT_NICE: 0,
        resource.RLIMIT_MSGQUEUE: 0,
    }


def apply_rlimits(values: dict[int, int]) -> None:
    for which, value in values.items():
        try:
            hard = resource.getrlimit(which)[1]
            if hard != resource.RLIM_INFINITY and (value > hard or value == resource.RLIM_INFINITY):
                value = hard  # noqa: PLW2901 - lowering is always allowed; raising needs a privilege
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise ConfinementError("limits", f"setrlimit({which}, {value}): {exc}") from None
