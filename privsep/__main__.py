"""``python -m privsep``: the same as the ``privsep`` command."""

from privsep.cli import entry

entry()
