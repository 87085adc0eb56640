"""Per-process resource limits (setrlimit) of a sandbox, computed in the broker from its policy.

The sandbox as a whole (memory, processes, CPU) is held by its cgroup
(``privsep.cgroups``). RLIMIT_NPROC is unlimited here (as far as the hard
limit allows): the kernel counts it per uid, shared by every sandbox of a
root broker, so it is set to ``processes`` only for a sandbox without a
cgroup (:func:`privsep.plan.spawnplan.in_cgroup`). The command applies them
(:func:`privsep.confine.limits.apply_rlimits`).
"""

from __future__ import annotations

import resource

TYPE_CHECKING = False
if TYPE_CHECKING:
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
