"""What the broker computes before it forks a sandbox; ``privsep.confine`` applies it after.

A newcomer's map: each module here computes what the module of the same
name in ``confine/`` applies in the sandbox's own processes.

- ``spawnplan``: the :class:`SpawnPlan` (``make_plan``) and how each start
  finishes it (cgroup, listening sockets, host id); ``Spawned``, the
  broker's handles on a started sandbox.
- ``view``: the filesystem view, resolved against this host (``confine/view.py`` mounts it).
- ``landlock``, ``limits``: the Landlock rules and the rlimits (``confine/`` applies them).
- ``filter``: the seccomp filter, compiled with libseccomp (``confine/seccomp.py``
  only loads the bytes); the syscall names and numbers the broker reports.
- ``hostids``: a root broker's claim on a host uid of the sandbox's own.
- ``control``: the reports the sandbox's processes send the broker (both ends).
- ``wire``: a plan as bytes for the forkserver, derived from the records' fields (``privsep._record``).
- ``cache``: ``privsep run``'s kept plans, used again while everything that made
  them (the inputs, and the host facts ``privsep._hostfacts`` recorded) still holds.

Nothing here imports ``privsep.confine`` or ``privsep.broker``
(``tests/unit/test_dependencies.py``): both build on this package.
"""
