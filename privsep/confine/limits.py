"""Per-process resource limits (setrlimit), so one child cannot exhaust the machine for everyone else.

The values are the broker's (:mod:`privsep.plan.limits`); the command sets
them, each no higher than the hard limit it inherited.
"""

from __future__ import annotations

import resource

from privsep.errors import ConfinementError


def apply_rlimits(values: dict[int, int]) -> None:
    for which, value in values.items():
        try:
            hard = resource.getrlimit(which)[1]
            if hard != resource.RLIM_INFINITY and (value > hard or value == resource.RLIM_INFINITY):
                value = hard  # noqa: PLW2901 - lowering is always allowed; raising needs a privilege
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise ConfinementError("limits", f"setrlimit({which}, {value}): {exc}") from None
